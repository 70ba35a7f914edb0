"""``KIND:PATH[#key=value,...]`` source specifications -> a stream of :class:`Document`.

Kinds and their options (PATH is a file, a directory or a glob; files are read in sorted order):

  wikipedia     official XML dump ``*.xml.bz2``             language (default: from ``xxwiki-`` name)
  wikipedia-hf  ``wikimedia/wikipedia``-style HF dataset     config (e.g. 20231101.fr), split, language
  bookcorpus    directory of ``*.txt`` books (one per file), or the HF sentence-per-row layout
  cc100         ``xx.txt`` / ``xx.txt.xz`` files (language from the name), blank-line separated
  text          ``*.txt`` (``.xz/.bz2/.gz``)                 language, doc=blank|line|file (default blank)
  jsonl         ``*.jsonl`` (``.gz`` ...)                    column, language, language_column
  parquet       ``*.parquet``                                column, language, language_column
  hf            any ``datasets.load_dataset`` name or local data dir: config, split, column, language,
                language_column (streamed)
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pretrain_distill.data import readers, wikipedia
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.readers import Document

_TEXT_SUFFIXES = (".txt", ".txt.xz", ".txt.bz2", ".txt.gz")
# kind -> (file suffixes for directory / glob expansion (None: not file based), allowed options)
KINDS: dict[str, tuple[tuple[str, ...] | None, set[str]]] = {
    "wikipedia": ((".xml.bz2", ".xml"), {"language"}),
    "wikipedia-hf": (None, {"config", "split", "language"}),
    "bookcorpus": (None, {"language"}),
    "cc100": (_TEXT_SUFFIXES, set()),
    "text": (_TEXT_SUFFIXES, {"language", "doc"}),
    "jsonl": ((".jsonl", ".jsonl.gz", ".jsonl.xz", ".jsonl.bz2"), {"column", "language", "language_column"}),
    "parquet": ((".parquet",), {"column", "language", "language_column"}),
    "hf": (None, {"config", "split", "column", "language", "language_column"}),
}


@dataclass(frozen=True)
class Source:
    """A parsed ``KIND:PATH[#key=value,...]``."""

    kind: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.kind}:{self.path}" + (f"#{opts}" if opts else "")


def parse_source(spec: str) -> Source:
    """Parse ``KIND:PATH[#key=value,...]``; unknown kinds or options raise :class:`DataError`."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise DataError(f"source {spec!r}: expected KIND:PATH with KIND one of {sorted(KINDS)}")
    path, _, opts = rest.partition("#")
    options: dict[str, str] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KINDS[kind][1]:
            allowed = sorted(KINDS[kind][1]) or "none"
            raise DataError(f"source {spec!r}: bad option {item!r} (options of {kind}: {allowed})")
        options[key] = value
    if not path:
        raise DataError(f"source {spec!r}: empty PATH")
    return Source(kind, path, options)


def source_files(source: Source) -> list[Path]:
    """The files a file-based source reads, in sorted order; raises if there are none."""
    suffixes = KINDS[source.kind][0] or ()
    path = Path(source.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"source {source.spec!r}: no {'/'.join(suffixes)} files found at {source.path}")
    return files


def iter_documents(source: Source) -> Iterator[Document]:
    """Every document of ``source``, streamed in a deterministic order."""
    opts = source.options
    language = opts.get("language", "und")
    if source.kind == "wikipedia":
        for path in source_files(source):
            yield from wikipedia.read_wikipedia_dump(path, opts.get("language"), clean=False)
    elif source.kind == "cc100":
        for path in source_files(source):
            yield from readers.read_cc100(path)
    elif source.kind == "text":
        read = _TEXT_LAYOUTS.get(opts.get("doc", "blank"))
        if read is None:
            raise DataError(f"source {source.spec!r}: doc= must be one of {sorted(_TEXT_LAYOUTS)}")
        for path in source_files(source):
            yield from read(path, language)
    elif source.kind in ("jsonl", "parquet"):
        read_rows = readers.read_jsonl if source.kind == "jsonl" else readers.read_parquet
        for path in source_files(source):
            yield from read_rows(path, opts.get("column", "text"), language, opts.get("language_column", ""))
    elif source.kind == "bookcorpus":
        yield from _bookcorpus(source, language if "language" in opts else "en")
    else:  # hf, wikipedia-hf
        config = opts.get("config")
        if source.kind == "wikipedia-hf" and "language" not in opts and config:
            language = config.rsplit(".", 1)[-1]  # "20231101.fr" -> "fr"
        yield from readers.read_hf(
            source.path,
            config,
            opts.get("split", "train"),
            opts.get("column", "text"),
            language,
            opts.get("language_column", ""),
        )


_TEXT_LAYOUTS: dict[str, Callable[[Path, str], Iterator[Document]]] = {
    "blank": readers.read_blank_separated,
    "line": readers.read_lines,
    "file": readers.read_whole_file,
}


def _bookcorpus(source: Source, language: str) -> Iterator[Document]:
    path = Path(source.path)
    books = sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.suffix == ".txt" else []
    if books:
        for book in books:
            yield from readers.read_whole_file(book, language)
    else:  # the Hugging Face layout (parquet / arrow / jsonl rows of sentences)
        yield from readers.read_bookcorpus_rows(readers.read_hf(source.path, language=language))
