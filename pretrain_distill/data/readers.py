"""Corpus readers: each yields :class:`Document` objects one at a time, never a whole corpus in memory.

Kinds (see :func:`pretrain_distill.data.sources.iter_documents` for the ``KIND:PATH`` spelling):
plain text and CC100 files (documents separated by blank lines, ``.xz`` / ``.bz2`` / ``.gz`` streamed),
BookCorpus (one book per file, or the Hugging Face sentence-per-row layout), JSON lines, Parquet and any
``datasets.load_dataset(..., streaming=True)`` source. Wikipedia XML dumps live in
:mod:`pretrain_distill.data.wikipedia`.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from pretrain_distill.data.errors import DataError

log = logging.getLogger(__name__)

_OPENERS = {".xz": lzma.open, ".bz2": bz2.open, ".gz": gzip.open}
# Invalid UTF-8 lines reported one by one per file before a summary takes over.
_REPORTED_BAD_LINES = 5


@dataclass
class Document:
    """One document: its text, a language tag, and where it came from (for error messages)."""

    text: str
    language: str
    source: str  # file path or dataset name
    position: str  # e.g. "line 12", "row 3", "page 12 'Anarchism'"
    markup: Optional[str] = None  # "wiki" when ``text`` is raw wikitext still to be stripped
    decode_errors: int = 0  # lines whose invalid UTF-8 bytes were replaced by U+FFFD


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for streaming, decompressing ``.xz`` / ``.bz2`` / ``.gz`` on the fly."""
    try:
        return _OPENERS.get(path.suffix, open)(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot open: {err}") from err


def iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """``(line_number, text, had_invalid_utf8)`` of a (compressed) text file, streamed.

    Invalid UTF-8 is replaced by U+FFFD and reported with the file and line (never silently).
    """
    bad = 0
    number = 0
    try:
        with open_binary(path) as stream:
            for number, raw in enumerate(stream, start=1):
                try:
                    yield number, raw.decode("utf-8"), False
                except UnicodeDecodeError as err:
                    bad += 1
                    if bad <= _REPORTED_BAD_LINES:
                        log.warning(
                            "%s: line %d, byte %d: invalid UTF-8 replaced by U+FFFD", path, number, err.start
                        )
                    yield number, raw.decode("utf-8", errors="replace"), True
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"{path}: unreadable after line {number}: {err}") from err
    if bad > _REPORTED_BAD_LINES:
        log.warning("%s: %d lines in all had invalid UTF-8 (replaced by U+FFFD)", path, bad)


def read_blank_separated(path: str | Path, language: str) -> Iterator[Document]:
    """Documents separated by blank lines (the CC100 layout); lines within a document kept."""
    path = Path(path)
    lines: list[str] = []
    start = errors = 0
    for number, line, bad in iter_lines(path):
        if line.strip():
            if not lines:
                start = number
            lines.append(line.rstrip("\r\n"))
            errors += bad
        elif lines:
            yield Document("\n".join(lines), language, str(path), f"line {start}", decode_errors=errors)
            lines, errors = [], 0
    if lines:
        yield Document("\n".join(lines), language, str(path), f"line {start}", decode_errors=errors)


def read_lines(path: str | Path, language: str) -> Iterator[Document]:
    """One document per non-blank line."""
    path = Path(path)
    for number, line, bad in iter_lines(path):
        if line.strip():
            yield Document(line.rstrip("\r\n"), language, str(path), f"line {number}", decode_errors=int(bad))


def read_whole_file(path: str | Path, language: str) -> Iterator[Document]:
    """The whole file as one document (a BookCorpus book)."""
    path = Path(path)
    lines = list(iter_lines(path))
    yield Document(
        "".join(line for _, line, _ in lines),
        language,
        str(path),
        "line 1",
        decode_errors=sum(b for *_, b in lines),
    )


def cc100_language(path: Path) -> str:
    """``de.txt.xz`` -> ``"de"`` (CC100's per-language file names)."""
    return path.name.split(".", 1)[0]


def read_cc100(path: str | Path) -> Iterator[Document]:
    """A CC100 ``xx.txt(.xz)`` file: blank-line separated documents tagged with the file's language."""
    path = Path(path)
    return read_blank_separated(path, cc100_language(path))


def read_jsonl(
    path: str | Path, column: str = "text", language: str = "und", language_column: str = ""
) -> Iterator[Document]:
    """JSON lines with a text column (and optionally a per-row language column)."""
    path = Path(path)
    for number, line, bad in iter_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: not valid JSON: {err.msg}") from err
        yield _row_document(row, column, language, language_column, str(path), f"line {number}", int(bad))


def read_parquet(
    path: str | Path, column: str = "text", language: str = "und", language_column: str = ""
) -> Iterator[Document]:
    """A Parquet file's text column, streamed batch by batch (never the whole table)."""
    import pyarrow.parquet as pq

    path = Path(path)
    columns = [column] + ([language_column] if language_column else [])
    try:
        parquet = pq.ParquetFile(path)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {parquet.schema_arrow.names})")
        row = 0
        for batch in parquet.iter_batches(columns=columns, batch_size=1024):
            for record in batch.to_pylist():
                yield _row_document(record, column, language, language_column, str(path), f"row {row}", 0)
                row += 1
    except OSError as err:  # pyarrow's ArrowInvalid / ArrowIOError derive from it
        raise DataError(f"{path}: unreadable Parquet: {err}") from err


def read_hf(
    name: str,
    config: str | None = None,
    split: str = "train",
    column: str = "text",
    language: str = "und",
    language_column: str = "",
) -> Iterator[Document]:
    """Any ``datasets.load_dataset(name, config, split=split, streaming=True)`` source.

    A local directory or file is loaded with the matching packaged builder (parquet, json, text,
    arrow) from its files, so the Hugging Face ``wikimedia/wikipedia`` or ``bookcorpus`` layouts
    saved to disk work offline.
    """
    import datasets

    local = Path(name)
    if local.exists():
        files = sorted(p for p in (local.rglob("*") if local.is_dir() else [local]) if p.is_file())
        builder = _hf_builder(files, name)
        kept = [str(p) for p in files if _builder_of(p) == builder]
        dataset = datasets.load_dataset(builder, data_files={split: kept}, split=split, streaming=True)
    else:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    for row_number, row in enumerate(dataset):
        yield _row_document(row, column, language, language_column, name, f"row {row_number}", 0)


def read_bookcorpus_rows(rows: Iterable[Document], max_chars: int = 20_000) -> Iterator[Document]:
    """Join the sentence-per-row Hugging Face ``bookcorpus`` layout into passages of ~``max_chars``.

    That layout has no book boundaries, so consecutive sentences form pseudo-documents; this keeps
    the packer from putting a document separator between every two sentences.
    """
    parts: list[str] = []
    size = 0
    first = None
    for doc in rows:
        first = first or doc
        parts.append(doc.text.strip())
        size += len(parts[-1]) + 1
        if size >= max_chars:
            yield Document(" ".join(parts), first.language, first.source, first.position)
            parts, size, first = [], 0, None
    if parts and first is not None:
        yield Document(" ".join(parts), first.language, first.source, first.position)


def _row_document(
    row: Any, column: str, language: str, language_column: str, source: str, position: str, bad: int
) -> Document:
    if not isinstance(row, dict) or column not in row:
        keys = list(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{source}: {position}: no text column {column!r} (found {keys})")
    text = row[column]
    if not isinstance(text, str):
        raise DataError(f"{source}: {position}: column {column!r} holds {type(text).__name__}, not text")
    lang = str(row.get(language_column) or language) if language_column else language
    return Document(text, lang, source, position, decode_errors=bad)


_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text", ".arrow": "arrow"}


def _builder_of(path: Path) -> str | None:
    return _BUILDERS.get(path.suffix)


def _hf_builder(files: list[Path], name: str) -> str:
    """The packaged ``datasets`` builder for the most common data-file type under ``name``."""
    found = sorted(b for b in map(_builder_of, files) if b is not None)
    if not found:
        raise DataError(f"{name}: no .parquet / .jsonl / .json / .txt / .arrow files to load")
    return max(dict.fromkeys(found), key=found.count)
