"""Tokenize a corpus once into packed, pre-tokenized webdataset shards plus a manifest.json
(``pretrain-distill prepare``; its ``--help`` describes the sources, the shard layout and resuming).

The sources are cut into units of work that worker processes read in parallel; each unit's documents
are tokenized with the teacher's fast tokenizer, packed into ``[CLS] ... [SEP]`` sequences, shuffled
within each shard and written as ``<lang>-<unit>-<k>.tar`` shards. The result is a pure function of the
inputs and settings, whatever the number of workers; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from pretrain_distill.core.files import atomic_write_json
from pretrain_distill.core.model_names import find_model
from pretrain_distill.core.run_lock import RunLock
from pretrain_distill.core.seeds import numpy_rng
from pretrain_distill.core.tokenizer_loading import load_tokenizer
from pretrain_distill.data import readers
from pretrain_distill.data.errors import CorruptInput, DataError
from pretrain_distill.data.manifest import MANIFEST, PROGRESS, VALIDATION
from pretrain_distill.data.packing import pack_documents
from pretrain_distill.data.readers import Document
from pretrain_distill.data.shards import write_shard
from pretrain_distill.data.sources import Source, Unit, iter_unit_documents, parse_source, plan_units
from pretrain_distill.data.token_counts import (
    chunk_counts_path,
    count_tokens,
    merge_chunk_counts,
    remove_chunk_counts,
    save_array,
)
from pretrain_distill.data.wikipedia import strip_wiki_markup

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: token counts per language (token_counts/<language>.npy)
_REPORT_BYTES = 4 << 20  # a worker reports its input progress every this many bytes


def available_cpus() -> int:
    """CPUs this process may use: ``SLURM_CPUS_PER_TASK``, else its CPU affinity, else all cores."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Everything a preparation's output depends on (a resumed run must match it exactly)."""

    sources: list[str]
    tokenizer: dict[str, Any]
    max_length: int
    shard_chars: int
    block_size: int
    seed: int
    validation_fraction: float = 0.0
    validation_sources: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    count_tokens: bool = True  # token counts per language in the manifest (off only to benchmark them)


@dataclass
class Chunk:
    """The documents of one future shard: one unit, one split, one language, ~``shard_chars`` chars."""

    unit: int
    index: int  # k-th chunk of the unit
    language: str
    split: str = "train"  # or VALIDATION
    documents: list[Document] = field(default_factory=list)
    chars: int = 0

    @property
    def name(self) -> str:
        prefix = f"{VALIDATION}/" if self.split == VALIDATION else ""
        return f"{prefix}{self.language}-{self.unit:06d}-{self.index:04d}.tar"


@dataclass(frozen=True)
class Job:
    """A unit to prepare: its number (fixes its shard names and seeds) and whether it is held out."""

    number: int
    unit: Unit
    validation: bool = False  # every document of a --validation-source unit is held out


def tokenizer_info(tokenizer: Any) -> tuple[dict[str, Any], str]:
    """``(manifest entry, backend JSON)`` of a Hugging Face fast tokenizer or a path / ``"minilm"``."""
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(find_model(str(tokenizer), "tokenizer"))
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} is not a fast (Rust) tokenizer")
    backend = tokenizer.backend_tokenizer.to_str()
    for role in ("cls", "sep", "pad", "mask"):
        if getattr(tokenizer, f"{role}_token_id") is None:
            raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no {role} token")
    vocab = len(tokenizer)
    info = {
        "name": str(tokenizer.name_or_path),
        "sha256": hashlib.sha256(backend.encode()).hexdigest(),
        "vocab_size": vocab,
        "dtype": "uint16" if vocab <= 2**16 else "int32",
        "cls_id": tokenizer.cls_token_id,
        "sep_id": tokenizer.sep_token_id,
        "pad_id": tokenizer.pad_token_id,
        "mask_id": tokenizer.mask_token_id,
        "special_ids": sorted(tokenizer.all_special_ids),
    }
    return info, backend


# ---------------------------------------------------------------------------------------------
# Worker side: one unit -> its shard files + their records


_WORKER: dict[str, Any] = {}


def _init_worker(backend_json: str, settings: Settings, out_dir: str) -> None:
    """Chunk workers: the tokenizer, settings and output directory."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    tokenizer = Tokenizer.from_str(backend_json)
    tokenizer.no_truncation()  # the teacher's file truncates / pads to 128: packing does both
    tokenizer.no_padding()
    _WORKER.update(tokenizer=tokenizer, settings=settings, out_dir=Path(out_dir))


def _init_reader(settings: Settings, skip_bad: bool, chunks: Any, progress: Any, stop: Any) -> None:
    """Reader processes: they send full chunks and input progress to the driver through queues."""
    readers.CONTEXT.skip_bad = skip_bad
    _WORKER.update(settings=settings, chunks=chunks, progress=progress, stop=stop)


def read_unit(
    job: Job, settings: Settings, emit: Callable[[Chunk], None], report: Callable[[int], Any]
) -> dict[str, Any]:
    """Read one unit into chunks, ``emit`` each; returns ``{"unit", "chunks", "bad_input"}``.

    Documents go to per-(split, language) chunks; a chunk is emitted as soon as it holds
    ``shard_chars`` characters and the partial ones at the end of the unit, so memory is bounded by
    one unit's open chunks. Held-out documents are drawn with a generator seeded by (seed, unit); with
    a validation fraction the first document of the first unit is held out whatever its draw, so that
    a small corpus and a small fraction still hold something out. ``report`` gets the input bytes read
    since its last call.
    """
    context = readers.CONTEXT
    context.bytes_read, context.bad = 0, []
    reported = 0
    held_out = numpy_rng(settings.seed, job.number, 1)
    fraction = 1.0 if job.validation else settings.validation_fraction
    chunks: dict[tuple[str, str], Chunk] = {}
    count = 0
    try:
        for position, doc in enumerate(iter_unit_documents(job.unit)):
            first = job.number == 0 and position == 0
            split = VALIDATION if fraction and (held_out.random() < fraction or first) else "train"
            chunk = chunks.get((split, doc.language))
            if chunk is None:
                chunk = chunks[split, doc.language] = Chunk(job.number, count, doc.language, split)
                count += 1
            chunk.documents.append(doc)
            chunk.chars += len(doc.text)
            if chunk.chars >= settings.shard_chars:
                emit(chunks.pop((split, doc.language)))
            if context.bytes_read - reported >= _REPORT_BYTES:
                report(context.bytes_read - reported)
                reported = context.bytes_read
    except CorruptInput as err:
        if not context.skip_bad:
            raise
        context.bad.append(
            {"file": err.file, "member_offset": err.member_offset, "error_offset": err.error_offset}
        )
        log.warning("skip_bad_input: %s; the rest of this unit is skipped", err)
    for chunk in sorted(chunks.values(), key=lambda c: c.index):
        emit(chunk)
    report(max(job.unit.size - reported, 0))
    return {"unit": job.number, "chunks": count, "bad_input": list(context.bad)}


def _read_unit_task(job: Job) -> dict[str, Any]:
    """A reader process's task: chunks go to the driver's queue (stopping when it says so)."""

    def emit(chunk: Chunk) -> None:
        while True:
            try:
                return _WORKER["chunks"].put(chunk, timeout=0.5)
            except queue_module.Full:
                if _WORKER["stop"].is_set():
                    raise RuntimeError("prepare stopped") from None

    def report(size: int) -> None:
        _WORKER["progress"].put(size)
        if _WORKER["stop"].is_set():
            raise RuntimeError("prepare stopped")

    return read_unit(job, _WORKER["settings"], emit, report)


def process_unit(job: Job) -> dict[str, Any]:
    """Read one unit and write its shards in this process; returns ``{"unit", "records", "bad_input"}``."""
    records: list[dict[str, Any]] = []
    result = read_unit(
        job, _WORKER["settings"], lambda c: records.append(process_chunk(c)), _WORKER["report"]
    )
    records.sort(key=lambda r: r["chunk"])
    return {"unit": job.number, "records": records, "bad_input": result["bad_input"]}


def process_chunk(chunk: Chunk) -> dict[str, Any]:
    """Clean, tokenize, pack and shuffle one chunk, write its shard; return the manifest record."""
    settings: Settings = _WORKER["settings"]
    info = settings.tokenizer
    texts, empty = [], []
    for doc in chunk.documents:
        text = strip_wiki_markup(doc.text) if doc.markup == "wiki" else doc.text
        if text.strip():
            texts.append(text)
        else:
            empty.append(doc)
    encodings = _WORKER["tokenizer"].encode_batch_fast(texts, add_special_tokens=False)
    ids, lengths = pack_documents(
        (e.ids for e in encodings),
        settings.max_length,
        info["cls_id"],
        info["sep_id"],
        info["pad_id"],
        np.dtype(info["dtype"]),
    )
    order = numpy_rng(settings.seed, chunk.unit, chunk.index).permutation(len(ids))
    ids, lengths = ids[order], lengths[order]
    if len(ids):
        shard = _WORKER["out_dir"] / chunk.name
        write_shard(shard, ids, lengths, settings.block_size)
        if settings.count_tokens:
            counts = count_tokens(ids, lengths, info["vocab_size"], info["pad_id"])
            save_array(chunk_counts_path(shard), counts)
    first_empty = empty[0] if empty else None
    return {
        "name": chunk.name,
        "unit": chunk.unit,
        "chunk": chunk.index,
        "split": chunk.split,
        "language": chunk.language,
        "sequences": int(len(ids)),
        "tokens": int(lengths.sum()),
        "documents": len(texts),
        "empty_documents": len(empty),
        "first_empty": f"{first_empty.source}: {first_empty.position}" if first_empty else None,
        "decode_errors": sum(d.decode_errors for d in chunk.documents),
    }


# ---------------------------------------------------------------------------------------------
# Driver


def plan_jobs(sources: Sequence[Source], validation_sources: Sequence[Source], unit_bytes: int) -> list[Job]:
    """Every unit of the sources, numbered in order (training sources first); checks every input."""
    jobs: list[Job] = []
    for held_out, group in ((False, sources), (True, validation_sources)):
        for source in group:
            for unit in plan_units(source, unit_bytes):
                jobs.append(Job(len(jobs), unit, held_out))
    return jobs


def prepare_shards(
    sources: Sequence[str | Source],
    out_dir: str | Path,
    tokenizer: Any = "minilm",
    max_length: int = 256,
    workers: int | None = None,
    shard_chars: int = 32_000_000,
    block_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    validation_fraction: float = 0.0,
    validation_sources: Sequence[str | Source] = (),
    skip_bad_input: bool = False,
    count_tokens: bool = True,
) -> dict[str, Any]:
    """Prepare ``sources`` into ``out_dir`` (shards + manifest.json); return the manifest.

    ``shard_chars`` is the input text (before markup removal) per shard and about the input bytes
    per unit of work; ``block_size`` the sequences per tar member. ``validation_fraction`` of the
    documents and every document of ``validation_sources`` go to ``out_dir/validation/``.
    ``skip_bad_input``: a corrupt compressed member is skipped and counted instead of stopping.
    ``count_tokens``: record how often each token id occurs, per language (``token_counts`` in the
    manifest, see :mod:`.token_counts`); off only to measure what counting costs.
    Every input is checked before anything is written. Re-running with the same arguments resumes an
    interrupted run (or returns the finished manifest); other arguments for a non-empty ``out_dir``
    raise :class:`DataError`.
    """
    parsed = [s if isinstance(s, Source) else parse_source(s) for s in sources]
    held_out = [s if isinstance(s, Source) else parse_source(s) for s in validation_sources]
    if not parsed:
        raise DataError("prepare: no --source given")
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"prepare: --validation-fraction must be in [0, 1), got {validation_fraction}")
    info, backend = tokenizer_info(tokenizer)
    settings = Settings(
        [s.spec for s in parsed],
        info,
        max_length,
        shard_chars,
        block_size,
        seed,
        validation_fraction,
        [s.spec for s in held_out],
        count_tokens=count_tokens,
    )
    out = Path(out_dir)
    finished = _check_out_dir(out, settings)
    if finished is not None:
        log.info("%s: already prepared", out)
        return finished
    jobs = plan_jobs(parsed, held_out, shard_chars)  # finds every input (or raises) before writing
    lock = RunLock(out, "prepare").acquire()  # a second prepare into `out` refuses, naming this one
    try:
        if (finished := _check_out_dir(out, settings)) is not None:  # the one we waited for finished it
            return finished
        done = _load_progress(out, settings)
        workers = max(1, workers or available_cpus())  # readers: at most one per unit (_run_units)
        start = time.perf_counter()
        _prepare_units(out, jobs, done, workers, (backend, settings, str(out), skip_bad_input), progress)
        manifest = _write_manifests(
            out, settings, [done[j.number] for j in jobs], time.perf_counter() - start, workers
        )
        (out / PROGRESS).unlink()
    finally:
        lock.release()
    _report(manifest)
    return manifest


def _prepare_units(
    out: Path,
    jobs: list[Job],
    done: dict[int, dict[str, Any]],
    workers: int,
    init_args: tuple[str, Settings, str, bool],
    progress: bool,
) -> None:
    """Prepare every job not in ``done`` (adding each to it), journalling each finished unit (flushed to
    disk) so that an interrupted run resumes after it."""
    todo = [job for job in jobs if job.number not in done]
    settings = init_args[1]
    with (
        open(out / PROGRESS, "a") as journal,
        tqdm(
            total=sum(j.unit.size for j in jobs),
            initial=sum(j.unit.size for j in jobs if j.number in done),
            unit="B",
            unit_scale=True,
            desc="prepare",
            disable=not progress,
        ) as bar,
    ):
        if any(job.validation or settings.validation_fraction for job in todo):
            (out / VALIDATION).mkdir(exist_ok=True)
        for result in _run_units(todo, workers, init_args, bar.update):
            done[result["unit"]] = result
            journal.write(json.dumps(result) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            bar.set_postfix(units=f"{len(done)}/{len(jobs)}")


def _write_manifests(
    out: Path, settings: Settings, results: list[dict[str, Any]], seconds: float, workers: int
) -> dict[str, Any]:
    """The training manifest (and the held-out one under ``validation/``) of the units' results."""
    records = [r for result in results for r in result["records"]]
    bad_input = [b for result in results for b in result["bad_input"]]
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == VALIDATION]
    manifest = _manifest(settings, train, seconds, workers)
    manifest["bad_input"] = bad_input
    manifest["totals"]["bad_input"] = len(bad_input)
    if settings.count_tokens:
        manifest["token_counts"] = _merge_counts(out, manifest, settings)
    if held and not sum(r["sequences"] for r in held):
        log.warning(
            "prepare: the held-out documents hold no text after cleaning: no validation split "
            "(hold out more with a larger --validation-fraction, or give --validation-source)"
        )
        shutil.rmtree(out / VALIDATION)
    elif held:
        validation = _manifest(settings, held, seconds, workers)
        for shard in validation["shards"]:
            shard["name"] = shard["name"].removeprefix(f"{VALIDATION}/")
        if settings.count_tokens:
            validation["token_counts"] = _merge_counts(out / VALIDATION, validation, settings)
        atomic_write_json(out / VALIDATION / MANIFEST, validation)
        manifest["validation"] = {
            "dir": VALIDATION,
            **validation["totals"],
            "shards": len(validation["shards"]),
        }
    atomic_write_json(out / MANIFEST, manifest)
    remove_chunk_counts(out, [r["name"] for r in records if r["sequences"] > 0])
    return manifest


def _merge_counts(split_dir: Path, manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The split's token counts per language (files under ``split_dir``), from its shards' chunk counts."""
    shards = [(s["name"], s["language"]) for s in manifest["shards"]]
    return merge_chunk_counts(split_dir, shards, settings.tokenizer["vocab_size"])


def _run_units(
    jobs: list[Job],
    workers: int,
    init_args: tuple[str, Settings, str, bool],
    advance: Callable[[int], Any],
) -> Iterator[dict[str, Any]]:
    """Results ``{"unit", "records", "bad_input"}`` of the units as they finish (any order).

    One worker: everything in this process. More: up to ``workers`` reader processes read units (in
    parallel over units) and queue their full chunks; ``workers`` chunk processes strip, tokenize, pack
    and write them (in parallel within a unit too: one big file still uses every core). At most
    ``2 x workers`` chunks wait in the queue and ``2 x workers`` are in flight, so memory stays bounded.
    """
    backend, settings, out, skip_bad = init_args
    if workers == 1:
        _init_worker(backend, settings, out)
        readers.CONTEXT.skip_bad = skip_bad
        _WORKER["report"] = advance
        yield from map(process_unit, jobs)
        return
    context = multiprocessing.get_context()
    chunk_queue, progress, stop = context.Queue(2 * workers), context.Queue(), context.Event()
    reader_pool = ProcessPoolExecutor(
        min(workers, len(jobs)), context, _init_reader, (settings, skip_bad, chunk_queue, progress, stop)
    )
    chunk_pool = ProcessPoolExecutor(workers, context, _init_worker, (backend, settings, out))
    units = {job.number: {"records": [], "summary": None} for job in jobs}
    try:
        reading = {reader_pool.submit(_read_unit_task, job) for job in jobs}
        writing: set[Future] = set()
        while reading or writing or units:
            while len(writing) < 2 * workers:
                try:
                    writing.add(chunk_pool.submit(process_chunk, chunk_queue.get(timeout=0.05)))
                except queue_module.Empty:
                    break
            finished, _ = wait(reading | writing, timeout=0.2, return_when=FIRST_COMPLETED)
            while not progress.empty():
                advance(progress.get())
            for future in finished:
                result = future.result()
                if future in reading:
                    reading.discard(future)
                    units[result["unit"]]["summary"] = result
                else:
                    writing.discard(future)
                    units[result["unit"]]["records"].append(result)
            for number, unit in list(units.items()):
                summary = unit["summary"]
                if summary is not None and len(unit["records"]) == summary["chunks"]:
                    del units[number]
                    records = sorted(unit["records"], key=lambda r: r["chunk"])
                    yield {"unit": number, "records": records, "bad_input": summary["bad_input"]}
        while not progress.empty():
            advance(progress.get())
    finally:
        stop.set()
        reader_pool.shutdown(wait=True, cancel_futures=True)
        chunk_pool.shutdown(wait=True, cancel_futures=True)


def _check_out_dir(out: Path, settings: Settings) -> dict[str, Any] | None:
    """The finished manifest when ``out`` holds this very preparation; raise if it holds another."""
    path = out / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("settings") != asdict(settings):
        raise DataError(f"{out}: holds a finished preparation with other settings; choose another --out")
    return manifest


def _load_progress(out: Path, settings: Settings) -> dict[int, dict[str, Any]]:
    """Results of the units an interrupted run finished (their shards exist); ``{}`` for a fresh start."""
    path = out / PROGRESS
    if not path.exists():
        if any(out.glob("*.tar")):
            raise DataError(f"{out}: holds shards but no {PROGRESS} / {MANIFEST}; choose another --out")
        path.write_text(json.dumps(asdict(settings)) + "\n")
        return {}
    lines = path.read_text().splitlines()
    if not lines or json.loads(lines[0]) != asdict(settings):
        raise DataError(f"{path}: an interrupted preparation with other settings; choose another --out")
    done = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption: that unit is redone
            log.warning("%s: line %d incomplete, its unit is prepared again", path, number)
            continue
        if all(_chunk_written(out, r, settings) for r in result["records"]):
            done[result["unit"]] = result
    log.info("%s: resuming, %d units already done", out, len(done))
    return done


def _chunk_written(out: Path, record: dict[str, Any], settings: Settings) -> bool:
    """Whether a finished chunk's files (shard, token counts) are on disk."""
    if record["sequences"] == 0:
        return True
    shard = out / record["name"]
    return shard.exists() and (not settings.count_tokens or chunk_counts_path(shard).exists())


def _manifest(
    settings: Settings, records: list[dict[str, Any]], seconds: float, workers: int
) -> dict[str, Any]:
    languages: dict[str, dict[str, int]] = {}
    for r in records:
        entry = languages.setdefault(
            r["language"], {"shards": 0, "sequences": 0, "tokens": 0, "documents": 0}
        )
        entry["shards"] += r["sequences"] > 0
        for key in ("sequences", "tokens", "documents"):
            entry[key] += r[key]
    totals = {
        k: sum(r[k] for r in records)
        for k in ("sequences", "tokens", "documents", "empty_documents", "decode_errors")
    }
    return {
        "format_version": FORMAT_VERSION,
        "max_length": settings.max_length,
        "block_size": settings.block_size,
        "packing": "full-sentences",
        "tokenizer": settings.tokenizer,
        "sources": settings.sources,
        "shards": [
            {k: r[k] for k in ("name", "language", "sequences", "tokens", "documents")}
            for r in records
            if r["sequences"] > 0
        ],
        "languages": languages,
        "totals": totals,
        "skipped": [
            {k: r[k] for k in ("name", "empty_documents", "first_empty", "decode_errors")}
            for r in records
            if r["empty_documents"] or r["decode_errors"]
        ],
        "settings": asdict(settings),
        "last_run": {"seconds": round(seconds, 3), "workers": workers},
    }


def _report(manifest: dict[str, Any]) -> None:
    totals = manifest["totals"]
    for bad in manifest["bad_input"]:
        log.warning(
            "skipped a corrupt member of %s starting at byte %d (error by byte %d)",
            bad["file"],
            bad["member_offset"],
            bad["error_offset"],
        )
    for entry in manifest["skipped"]:
        if entry["empty_documents"]:
            log.warning(
                "%s: %d empty documents skipped (first: %s)",
                entry["name"],
                entry["empty_documents"],
                entry["first_empty"],
            )
    if totals["decode_errors"]:
        log.warning(
            "%d lines had invalid UTF-8 replaced by U+FFFD (see the warnings above)", totals["decode_errors"]
        )
