"""``KIND:PATH[#key=value,...]`` source specifications -> a stream of :class:`Document`.

Kinds and their options (PATH is a file, a directory or a glob; files are read in sorted order):

  wikipedia     official XML dump ``*.xml.bz2`` (or split parts ``*.xml-p1p41242.bz2``): language
                (default: from the ``xxwiki-`` name), index (a multistream dump's index file)
  wikipedia-hf  ``wikimedia/wikipedia``-style HF dataset     config (e.g. 20231101.fr), split, language
  bookcorpus    directory of ``*.txt`` books (one per file), or the HF sentence-per-row layout
  cc100         ``xx.txt`` / ``xx.txt.xz`` files (language from the name), blank-line separated
  text          ``*.txt`` (``.xz/.bz2/.gz``)                 language, doc=blank|line|file (default blank)
  jsonl         ``*.jsonl`` (``.gz`` ...)                    column, language, language_column
  parquet       ``*.parquet``                                column, language, language_column
  hf            any ``datasets.load_dataset`` name or local data dir: config, split, column, language,
                language_column (streamed)

A source is cut into :class:`Unit` s (files, groups of small files, byte ranges of a multistream dump,
shards of a streamed dataset) that ``prepare`` reads in parallel; the cut depends only on the input.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pretrain_distill.data import readers, wikipedia
from pretrain_distill.data.errors import DataError
from pretrain_distill.data.readers import Document

_TEXT_SUFFIXES = (".txt", ".txt.xz", ".txt.bz2", ".txt.gz")
# A dump, or one part of a split dump: enwiki-...-pages-articles1.xml-p1p41242.bz2
_WIKI_DUMP = re.compile(r"\.xml(-p\d+p\d+)?(\.bz2)?$")
# kind -> (file suffixes for directory / glob expansion (None: not file based), allowed options)
KINDS: dict[str, tuple[tuple[str, ...] | None, set[str]]] = {
    "wikipedia": ((".xml.bz2", ".xml"), {"language", "index"}),
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
        wanted = _WIKI_DUMP.search if source.kind == "wikipedia" else lambda name: name.endswith(suffixes)
        files = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p.name))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"source {source.spec!r}: no {'/'.join(suffixes)} files found at {source.path}")
    return files


@dataclass(frozen=True)
class Unit:
    """One piece of work of ``prepare``: read by one worker, start to end, independently of the others."""

    source: Source
    files: tuple[str, ...] = ()  # read one after another; empty for a hub dataset
    size: int = 0  # input bytes (the progress bar's unit; 0 when unknown)
    byte_range: Optional[tuple[int, Optional[int]]] = None  # streams of a multistream dump
    shard: Optional[tuple[int, int]] = None  # (index, count) of a streamed hub dataset
    language: Optional[str] = None  # the language of this unit's files (wikipedia-hf config dirs)


def plan_units(source: Source, target_bytes: int) -> list[Unit]:
    """Cut ``source`` into units; small files are grouped up to ``target_bytes``. Checks the input."""
    opts = source.options
    if source.kind == "text" and opts.get("doc", "blank") not in _TEXT_LAYOUTS:
        raise DataError(f"source {source.spec!r}: doc= must be one of {sorted(_TEXT_LAYOUTS)}")
    if source.kind == "wikipedia" and "index" in opts:
        files = source_files(source)
        if len(files) != 1:
            raise DataError(f"source {source.spec!r}: index= needs PATH to be one multistream dump")
        ranges = wikipedia.multistream_ranges(opts["index"], target_bytes)
        size = files[0].stat().st_size
        return [
            Unit(source, (str(files[0]),), (b if b is not None else size) - a, byte_range=(a, b))
            for a, b in ranges
        ]
    if source.kind in ("hf", "wikipedia-hf", "bookcorpus"):
        return _dataset_units(source, target_bytes)
    return _group_files(source, source_files(source), target_bytes)


def _group_files(
    source: Source, files: list[Path], target_bytes: int, language: Optional[str] = None
) -> list[Unit]:
    """Consecutive files grouped into units of at least ``target_bytes`` (a big file is a unit alone)."""
    units: list[Unit] = []
    group: list[str] = []
    size = 0
    for path in files:
        group.append(str(path))
        size += path.stat().st_size
        if size >= target_bytes:
            units.append(Unit(source, tuple(group), size, language=language))
            group, size = [], 0
    if group:
        units.append(Unit(source, tuple(group), size, language=language))
    return units


def _dataset_units(source: Source, target_bytes: int) -> list[Unit]:
    """Units of a dataset source: local data files grouped by language directory, or hub shards."""
    opts = source.options
    path = Path(source.path)
    if source.kind == "bookcorpus" and _books(path):
        return _group_files(source, _books(path), target_bytes)
    if not path.exists():
        split = opts.get("split", "train")
        count = readers.hf_shard_count(source.path, opts.get("config"), split)
        return [Unit(source, shard=(i, count)) for i in range(count)]
    config = opts.get("config")
    if config and path.is_dir() and path.name != config:
        if not (path / config).is_dir():
            found = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise DataError(
                f"source {source.spec!r}: no config directory {config!r} in {path} (found {found})"
            )
        path = path / config
    files = readers.hf_data_files(path)
    units: list[Unit] = []
    for language, group in _by_config_dir(source, files, path).items():
        units += _group_files(source, group, target_bytes, language)
    return units


def _by_config_dir(source: Source, files: list[Path], root: Path) -> dict[Optional[str], list[Path]]:
    """``wikipedia-hf`` without ``config=``: files under ``20231101.fr/`` are French, ``.en/`` English."""
    groups: dict[Optional[str], list[Path]] = {}
    for path in files:
        language = None
        if source.kind == "wikipedia-hf" and "language" not in source.options and root.is_dir():
            top = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else ""
            language = _config_language(top)
        groups.setdefault(language, []).append(path)
    return groups


def _config_language(config: str) -> Optional[str]:
    """``"20231101.fr"`` -> ``"fr"`` (``wikimedia/wikipedia`` config names); ``None`` otherwise."""
    match = re.fullmatch(r"\d+\.([\w-]+)", config)
    return match.group(1) if match else None


def _books(path: Path) -> list[Path]:
    return sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.suffix == ".txt" else []


def iter_unit_documents(unit: Unit) -> Iterator[Document]:
    """Every document of one unit, streamed in a deterministic order."""
    source = unit.source
    opts = source.options
    language = opts.get("language", "und")
    files = [Path(f) for f in unit.files]
    if source.kind == "wikipedia":
        for path in files:
            yield from wikipedia.read_wikipedia_dump(path, opts.get("language"), False, unit.byte_range)
    elif source.kind == "cc100":
        for path in files:
            yield from readers.read_cc100(path)
    elif source.kind == "text":
        for path in files:
            yield from _TEXT_LAYOUTS[opts.get("doc", "blank")](path, language)
    elif source.kind in ("jsonl", "parquet"):
        read_rows = readers.read_jsonl if source.kind == "jsonl" else readers.read_parquet
        for path in files:
            yield from read_rows(path, opts.get("column", "text"), language, opts.get("language_column", ""))
    elif source.kind == "bookcorpus" and files and files[0].suffix == ".txt":
        for path in files:
            yield from readers.read_whole_file(path, opts.get("language", "en"))
    elif source.kind == "bookcorpus":  # the Hugging Face layout (rows of sentences)
        rows = readers.read_hf(
            source.path, split=opts.get("split", "train"), language=opts.get("language", "en"),
            files=list(unit.files) or None, shard=unit.shard,
        )  # fmt: skip
        yield from readers.read_bookcorpus_rows(rows)
    else:  # hf, wikipedia-hf
        config = opts.get("config")
        if source.kind == "wikipedia-hf" and "language" not in opts:
            language = unit.language or (config.rsplit(".", 1)[-1] if config else language)
        yield from readers.read_hf(
            source.path,
            config,
            opts.get("split", "train"),
            opts.get("column", "text"),
            language,
            opts.get("language_column", ""),
            files=list(unit.files) if unit.files else None,
            shard=unit.shard,
        )


def iter_documents(source: Source, target_bytes: int = 1 << 30) -> Iterator[Document]:
    """Every document of ``source``, streamed in a deterministic order (unit after unit)."""
    for unit in plan_units(source, target_bytes):
        yield from iter_unit_documents(unit)


_TEXT_LAYOUTS: dict[str, Callable[[Path, str], Iterator[Document]]] = {
    "blank": readers.read_blank_separated,
    "line": readers.read_lines,
    "file": readers.read_whole_file,
}
