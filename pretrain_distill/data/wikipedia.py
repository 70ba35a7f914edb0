"""Official Wikipedia XML dumps (``*.xml.bz2``, split ``*.xml-p1p41242.bz2`` parts, byte ranges of a
multistream dump given its index), streamed page by page, and wiki-markup removal."""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Optional

import mwparserfromhell
from mwparserfromhell.nodes import Tag, Wikilink

from pretrain_distill.data.errors import DataError
from pretrain_distill.data.readers import Document, open_binary

# Tags whose content is not running prose (footnotes, galleries, math, tables of raw data).
_DROPPED_TAGS = {"ref", "references", "gallery", "math", "timeline", "imagemap", "score", "table"}
# A link whose target carries a namespace (Category:, File:, an interlanguage "de:") is not prose.
_NAMESPACED_LINK = re.compile(r"^\s*:?\s*[\w-]+\s*:")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Footnotes are removed before parsing: the parser leaves a <ref> whose content has unbalanced
# markup ('' or [[) as literal text.
_REFS = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.IGNORECASE | re.DOTALL)


def strip_wiki_markup(wikitext: str) -> str:
    """Plain prose of a page: templates, footnotes, tables, files and categories removed."""
    code = mwparserfromhell.parse(_REFS.sub("", wikitext))
    for node in code.filter(recursive=True, forcetype=(Tag, Wikilink)):
        drop = (
            isinstance(node, Tag)
            and str(node.tag).lower() in _DROPPED_TAGS
            or isinstance(node, Wikilink)
            and _NAMESPACED_LINK.match(str(node.title))
        )
        if drop:
            try:
                code.remove(node)
            except ValueError:  # already gone with an enclosing node
                pass
    lines = (line.strip() for line in code.strip_code(normalize=True, collapse=True).splitlines())
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def dump_language(path: Path) -> str:
    """``enwiki-...xml.bz2`` -> ``"en"`` (the dump's file-name convention); ``"und"`` otherwise."""
    match = re.match(r"([a-z_-]+?)wiki-", path.name)
    return match.group(1).replace("_", "-") if match else "und"


def multistream_ranges(index: str | Path, target_bytes: int) -> list[tuple[int, Optional[int]]]:
    """Byte ranges ``[start, stop)`` of a multistream dump from its ``...-multistream-index.txt.bz2``.

    The index lists ``offset:page_id:title`` per page; each offset starts a bz2 stream of ~100 whole
    pages. Consecutive streams are grouped into ranges of about ``target_bytes`` compressed bytes; the
    last range runs to the end of the file. The first stream (the ``<siteinfo>`` header) is left out.
    """
    offsets: list[int] = []
    try:
        with bz2.open(index, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                head = line.split(":", 1)[0]
                if not head.isdigit():
                    raise DataError(f"{index}: line {number}: not an 'offset:page_id:title' index line")
                if not offsets or int(head) != offsets[-1]:
                    offsets.append(int(head))
    except (OSError, EOFError) as err:
        raise DataError(f"{index}: unreadable multistream index: {err}") from err
    if not offsets or offsets != sorted(offsets):
        raise DataError(f"{index}: empty or unsorted multistream index")
    starts = [offsets[0]]
    for offset in offsets[1:]:
        if offset - starts[-1] >= target_bytes:
            starts.append(offset)
    return [(a, b) for a, b in zip(starts, starts[1:])] + [(starts[-1], None)]


def _xml_blocks(stream, wrap: bool) -> Iterator[bytes]:
    """The stream's bytes; ``wrap``: a range of page streams made one document (``<pages>...</pages>``)."""
    if wrap:
        yield b"<pages>"
    carry = b""
    for block in iter(partial(stream.read, 1 << 16), b""):
        if not wrap:
            yield block
            continue
        data = (carry + block).replace(b"</mediawiki>", b"")  # the dump's last stream closes the root
        carry, data = data[-16:], data[:-16]
        yield data
    if wrap:
        yield carry + b"</pages>"


def read_wikipedia_dump(
    path: str | Path,
    language: str | None = None,
    clean: bool = True,
    byte_range: Optional[tuple[int, Optional[int]]] = None,
) -> Iterator[Document]:
    """Articles (namespace 0, no redirects) of a ``.xml`` / ``.xml.bz2`` dump, never fully in memory.

    ``clean=False`` yields the raw wikitext with ``markup="wiki"`` so that the caller can strip it
    elsewhere (``prepare`` does it in its worker processes). ``byte_range``: only the pages of the bz2
    streams in ``[start, stop)`` of a multistream dump (see :func:`multistream_ranges`).
    """
    path = Path(path)
    language = language or dump_language(path)
    start, stop = byte_range or (0, None)
    title = ""
    try:
        # A corrupt member breaks the XML: it is never skipped inside a page (resync=False).
        with open_binary(path, start, stop, resync=False) as stream:
            parser = ET.XMLPullParser(events=("start", "end"))
            root = None
            for block in _xml_blocks(stream, wrap=byte_range is not None):
                parser.feed(block)
                for event, elem in parser.read_events():
                    if root is None:
                        root = elem
                    if event == "start" or not elem.tag.endswith("}page") and elem.tag != "page":
                        continue
                    ns = elem.tag[: -len("page")]
                    title = elem.findtext(f"{ns}title") or ""
                    if elem.findtext(f"{ns}ns") == "0" and elem.find(f"{ns}redirect") is None:
                        text = elem.findtext(f"{ns}revision/{ns}text") or ""
                        page_id = elem.findtext(f"{ns}id") or "?"
                        yield Document(
                            text=strip_wiki_markup(text) if clean else text,
                            language=language,
                            source=str(path),
                            position=f"page {page_id} {title!r}",
                            markup=None if clean else "wiki",
                        )
                    root.clear()  # drop the finished page: memory stays bounded by one page
            parser.close()
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML at line {err.position[0]}, column {err.position[1]}") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable after page {title!r}: {err}") from err
