"""Official Wikipedia XML dumps (``*.xml.bz2``), streamed page by page, and wiki-markup removal."""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import mwparserfromhell
from mwparserfromhell.nodes import Tag, Wikilink

from pretrain_distill.data.errors import DataError
from pretrain_distill.data.readers import Document

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


def read_wikipedia_dump(
    path: str | Path, language: str | None = None, clean: bool = True
) -> Iterator[Document]:
    """Articles (namespace 0, no redirects) of a ``.xml`` / ``.xml.bz2`` dump, never fully in memory.

    ``clean=False`` yields the raw wikitext with ``markup="wiki"`` so that the caller can strip it
    elsewhere (``prepare`` does it in its worker processes).
    """
    path = Path(path)
    language = language or dump_language(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    title = ""
    try:
        with opener(path, "rb") as stream:
            root = None
            for event, elem in ET.iterparse(stream, events=("start", "end")):
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
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML at line {err.position[0]}, column {err.position[1]}") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable after page {title!r}: {err}") from err
