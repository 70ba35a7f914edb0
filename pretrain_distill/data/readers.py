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
import io
import json
import logging
import lzma
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

import datasets
import pyarrow.parquet as pq

from pretrain_distill.data.errors import CorruptInput, DataError

log = logging.getLogger(__name__)

# Start of every member (stream) of a .bz2 / .xz file: where reading resumes after a corrupt one.
_MEMBER_MAGIC = {".bz2": b"BZh", ".xz": b"\xfd7zXZ\x00"}
_BZ2_BLOCK_MAGIC = b"1AY&SY"  # follows "BZh" + the block-size digit
_CHUNK = 1 << 18  # compressed bytes read at a time
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


@dataclass
class ReadContext:
    """Per-process reading state of ``prepare``'s workers (one unit of work at a time).

    ``skip_bad``: a corrupt ``.bz2`` member / ``.xz`` stream is skipped (reading resumes at the next
    member) instead of raising :class:`CorruptInput`; each skip is appended to ``bad``.
    ``bytes_read`` counts the input bytes read from disk (the progress bar's unit).
    """

    skip_bad: bool = False
    bytes_read: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)


CONTEXT = ReadContext()


def open_binary(path: Path, start: int = 0, stop: Optional[int] = None, resync: bool = True) -> BinaryIO:
    """Open ``path`` for streaming, decompressing ``.xz`` / ``.bz2`` / ``.gz`` on the fly.

    ``.bz2`` / ``.xz`` files are decoded member by member from byte ``start`` to ``stop`` (a range of
    a multistream dump); a corrupt member raises :class:`CorruptInput` naming the file and the byte
    offsets, or, with ``CONTEXT.skip_bad`` and ``resync``, is skipped and recorded in ``CONTEXT.bad``.
    """
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot open: {err}") from err
    if path.suffix in _MEMBER_MAGIC:
        return io.BufferedReader(_MemberReader(path, raw, start, stop, resync), buffer_size=1 << 16)
    counted = io.BufferedReader(_CountingReader(raw), buffer_size=1 << 16)
    return gzip.GzipFile(fileobj=counted, mode="rb") if path.suffix == ".gz" else counted


class _CountingReader(io.RawIOBase):
    """A raw file that adds the bytes it reads to ``CONTEXT.bytes_read``."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        CONTEXT.bytes_read += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _MemberReader(io.RawIOBase):
    """Decompressed bytes of the concatenated ``.bz2`` members / ``.xz`` streams in ``[start, stop)``."""

    def __init__(self, path: Path, raw: BinaryIO, start: int, stop: Optional[int], resync: bool) -> None:
        self.path, self.raw, self.stop, self.resync = path, raw, stop, resync
        self.kind = path.suffix
        raw.seek(start)
        self.offset = start  # file offset of pending[0]
        self.pending = b""  # compressed bytes not given to a decompressor yet
        self.member = start  # file offset where the current member began
        self.decoder: Any = None  # None between members
        self.out = b""
        self.out_pos = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        while self.out_pos >= len(self.out):
            if not self._decode():
                return 0
        n = min(len(buffer), len(self.out) - self.out_pos)
        buffer[:n] = self.out[self.out_pos : self.out_pos + n]
        self.out_pos += n
        return n

    def _fill(self) -> bool:
        size = _CHUNK if self.stop is None else min(_CHUNK, self.stop - self.offset - len(self.pending))
        data = self.raw.read(size) if size > 0 else b""
        CONTEXT.bytes_read += len(data)
        self.pending += data
        return bool(data)

    def _decode(self) -> bool:
        """Decode the next compressed chunk into ``out``; False at the end of the range."""
        if not self.pending and not self._fill():
            if self.decoder is not None:
                self._corrupt("the file ends inside this member (truncated)", self.offset)
            return False
        if self.decoder is None:
            if self.kind == ".xz":  # stream padding: zero bytes between streams
                stripped = self.pending.lstrip(b"\0")
                self.offset += len(self.pending) - len(stripped)
                self.pending = stripped
                if not stripped:
                    return True
            self.member = self.offset
            self.decoder = bz2.BZ2Decompressor() if self.kind == ".bz2" else lzma.LZMADecompressor()
        data, self.pending = self.pending, b""
        try:
            self.out, self.out_pos = self.decoder.decompress(data), 0
        except (OSError, EOFError, lzma.LZMAError) as err:
            self._corrupt(str(err), self.offset + len(data))
            return True
        if self.decoder.eof:
            self.pending = self.decoder.unused_data
            self.decoder = None
        self.offset += len(data) - len(self.pending)
        return True

    def _corrupt(self, error: str, at: int) -> None:
        """Raise, or record the bad member and move to the next one (``CONTEXT.skip_bad``)."""
        message = (
            f"{self.path}: corrupt {self.kind[1:]} member starting at byte {self.member} "
            f"(error by byte {at}): {error}"
        )
        if not (CONTEXT.skip_bad and self.resync):
            raise CorruptInput(message, str(self.path), self.member, at)
        CONTEXT.bad.append({"file": str(self.path), "member_offset": self.member, "error_offset": at})
        log.warning("skip_bad_input: %s; skipped to the next member", message)
        self.decoder, self.out, self.out_pos = None, b"", 0
        self._seek_member(self.member + 1)

    def _seek_member(self, offset: int) -> None:
        """Position ``pending`` at the next member start at or after ``offset`` (or at the end)."""
        magic = _MEMBER_MAGIC[self.kind]
        self.raw.seek(offset)
        self.offset, self.pending = offset, b""
        while self._fill():
            found = self._find_magic(magic)
            if found >= 0:
                self.offset += found
                self.pending = self.pending[found:]
                return
            keep = len(magic) + 7  # a magic cut by the chunk boundary
            self.offset += max(len(self.pending) - keep, 0)
            self.pending = self.pending[-keep:]
        self.offset += len(self.pending)
        self.pending = b""

    def _find_magic(self, magic: bytes) -> int:
        start = 0
        while (found := self.pending.find(magic, start)) >= 0:
            if self.kind != ".bz2":
                return found
            header = self.pending[found + 3 : found + 10]
            if len(header) < 7:
                return -1
            if header[:1].isdigit() and header[1:] == _BZ2_BLOCK_MAGIC:
                return found
            start = found + 1
        return -1


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
    except (OSError, EOFError) as err:
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
    files: Optional[list[str]] = None,
    shard: Optional[tuple[int, int]] = None,
) -> Iterator[Document]:
    """Rows of ``datasets.load_dataset(..., streaming=True)``: a hub dataset or local data files.

    ``files``: these local data files (parquet / json / text / arrow, one builder) instead of the hub
    dataset ``name`` / ``config``; ``shard=(index, count)``: only that shard of the streamed dataset
    (``IterableDataset.shard``), so that ``prepare`` can spread one dataset over its workers.
    """
    if files is not None:
        builder = _hf_builder([Path(f) for f in files], name)
        dataset = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True)
    else:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    if shard is not None:
        dataset = dataset.shard(num_shards=shard[1], index=shard[0])
    for row_number, row in enumerate(dataset):
        yield _row_document(row, column, language, language_column, name, f"row {row_number}", 0)


def hf_data_files(directory: Path) -> list[Path]:
    """The data files of a local dataset directory, of its most common type, in sorted order."""
    files = sorted(p for p in (directory.rglob("*") if directory.is_dir() else [directory]) if p.is_file())
    builder = _hf_builder(files, str(directory))
    return [p for p in files if _builder_of(p) == builder]


def hf_shard_count(name: str, config: str | None, split: str) -> int:
    """Shards of a hub dataset streamed with ``datasets`` (its data files), for spreading over workers."""
    try:
        return max(1, datasets.load_dataset(name, config, split=split, streaming=True).n_shards)
    except Exception as err:  # datasets raises many types (FileNotFound, ConnectionError, ValueError)
        raise DataError(
            f"{name}: cannot load with datasets (config {config!r}, split {split!r}): {err}"
        ) from err


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


# Files ``Dataset.save_to_disk`` writes beside its .arrow data: metadata, not rows.
_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


def _builder_of(path: Path) -> str | None:
    return None if path.name in _METADATA else _BUILDERS.get(path.suffix)


def _hf_builder(files: list[Path], name: str) -> str:
    """The packaged ``datasets`` builder for the most common data-file type under ``name``."""
    found = sorted(b for b in map(_builder_of, files) if b is not None)
    if not found:
        raise DataError(f"{name}: no .parquet / .jsonl / .json / .txt / .arrow files to load")
    return max(dict.fromkeys(found), key=found.count)
