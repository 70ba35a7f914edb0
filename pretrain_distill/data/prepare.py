"""Tokenize a corpus once into packed, pre-tokenized webdataset shards plus a manifest.json.

Each --source is KIND:PATH[#key=value,...] (PATH: a file, a directory or a glob):

  wikipedia     official XML dump *.xml.bz2 (markup stripped)   #language=xx (default: from xxwiki-)
  wikipedia-hf  wikimedia/wikipedia-style HF dataset or dir      #config=20231101.fr,split=train
  bookcorpus    directory of *.txt books, or the HF row layout    #language=en
  cc100         xx.txt / xx.txt.xz files (language from name)
  text          *.txt(.xz/.bz2/.gz)                             #language=xx,doc=blank|line|file
  jsonl         *.jsonl                                         #column=text,language=xx,language_column=lang
  parquet       *.parquet                                       #column=text,language=xx,language_column=lang
  hf            any datasets.load_dataset name or local dir     #config=..,split=..,column=..,language=..

Documents are tokenized with the teacher's fast tokenizer, packed contiguously into
[CLS] ... [SEP] sequences of --max-length tokens ([SEP] between documents; RoBERTa FULL-SENTENCES
packing, never mixing languages), shuffled within each shard (--seed) and written as
DIR/<lang>-<index>.tar shards of uint16 (int32 for vocabularies over 65536) arrays. The result is a
pure function of the inputs and settings, whatever --workers is. An interrupted run resumes when run
again with the same arguments: finished shards are kept, the rest are written.

Examples:
  pretrain-distill prepare --source wikipedia:enwiki-latest-pages-articles.xml.bz2 --out runs/shards/wiki
  pretrain-distill prepare --source wikipedia:enwiki.xml.bz2 --source bookcorpus:data/books/ \\
      --out runs/shards/wikibooks --max-length 256 --workers 16
  pretrain-distill prepare --source 'cc100:data/cc100/*.txt.xz' --out runs/shards/cc100 \\
      --tokenizer xlm-roberta-base
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pretrain_distill.data.errors import DataError
from pretrain_distill.data.packing import pack_documents
from pretrain_distill.data.readers import Document
from pretrain_distill.data.shards import write_shard
from pretrain_distill.data.sources import Source, iter_documents, parse_source
from pretrain_distill.data.wikipedia import strip_wiki_markup

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROGRESS = "progress.jsonl"  # settings line + one line per finished shard; removed when complete
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """Everything a preparation's output depends on (a resumed run must match it exactly)."""

    sources: list[str]
    tokenizer: dict[str, Any]
    max_length: int
    shard_chars: int
    block_size: int
    seed: int
    format_version: int = FORMAT_VERSION


@dataclass
class Chunk:
    """The documents of one future shard: one language, about ``shard_chars`` characters."""

    index: int
    language: str
    documents: list[Document] = field(default_factory=list)
    chars: int = 0

    @property
    def name(self) -> str:
        return f"{self.language}-{self.index:06d}.tar"


def tokenizer_info(tokenizer: Any) -> tuple[dict[str, Any], str]:
    """``(manifest entry, backend JSON)`` of a Hugging Face fast tokenizer or a path / ``"minilm"``."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        from pretrain_distill.assets import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(tokenizer)))
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


def iter_chunks(sources: Sequence[Source], shard_chars: int) -> Iterator[Chunk]:
    """Group the sources' documents into per-language chunks in a deterministic order."""
    open_chunks: dict[str, Chunk] = {}
    index = 0
    for source in sources:
        for doc in iter_documents(source):
            chunk = open_chunks.get(doc.language)
            if chunk is None:
                chunk = open_chunks[doc.language] = Chunk(index, doc.language)
                index += 1
            chunk.documents.append(doc)
            chunk.chars += len(doc.text)
            if chunk.chars >= shard_chars:
                yield open_chunks.pop(doc.language)
    yield from sorted(open_chunks.values(), key=lambda c: c.index)


# ---------------------------------------------------------------------------------------------
# Worker side: one chunk -> one shard file + its record


_WORKER: dict[str, Any] = {}


def _init_worker(backend_json: str, settings: Settings, out_dir: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(backend_json)
    tokenizer.no_truncation()  # the teacher's file truncates / pads to 128: packing does both
    tokenizer.no_padding()
    _WORKER.update(tokenizer=tokenizer, settings=settings, out_dir=Path(out_dir))


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
    order = np.random.default_rng([settings.seed, chunk.index]).permutation(len(ids))
    ids, lengths = ids[order], lengths[order]
    if len(ids):
        write_shard(_WORKER["out_dir"] / chunk.name, ids, lengths, settings.block_size)
    first_empty = empty[0] if empty else None
    return {
        "name": chunk.name,
        "index": chunk.index,
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
) -> dict[str, Any]:
    """Prepare ``sources`` into ``out_dir`` (shards + manifest.json); return the manifest.

    ``shard_chars`` is the input text (before markup removal) per shard, ``block_size`` the sequences
    per tar member. Re-running with the same arguments resumes an interrupted run (or returns the
    finished manifest); other arguments for a non-empty ``out_dir`` raise :class:`DataError`.
    """
    parsed = [s if isinstance(s, Source) else parse_source(s) for s in sources]
    if not parsed:
        raise DataError("prepare: no --source given")
    info, backend = tokenizer_info(tokenizer)
    settings = Settings([s.spec for s in parsed], info, max_length, shard_chars, block_size, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = _check_out_dir(out, settings)
    if finished is not None:
        log.info("%s: already prepared", out)
        return finished
    records = _load_progress(out, settings)
    workers = max(1, workers or os.cpu_count() or 1)
    start = time.perf_counter()
    with (
        open(out / PROGRESS, "a") as journal,
        tqdm(unit="tok", unit_scale=True, desc="prepare", disable=not progress) as bar,
    ):
        todo = (c for c in iter_chunks(parsed, shard_chars) if c.index not in records)
        for record in _run_chunks(todo, workers, backend, settings, out):
            records[record["index"]] = record
            journal.write(json.dumps(record) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            bar.update(record["tokens"])
            bar.set_postfix(shards=len(records))
    manifest = _manifest(
        settings, [records[i] for i in sorted(records)], time.perf_counter() - start, workers
    )
    _write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink()
    _report(manifest)
    return manifest


def _run_chunks(
    chunks: Iterator[Chunk], workers: int, backend: str, settings: Settings, out: Path
) -> Iterator[dict[str, Any]]:
    """Process chunks in order, at most ``workers + 1`` in flight (reading never runs ahead)."""
    if workers == 1:
        _init_worker(backend, settings, str(out))
        yield from map(process_chunk, chunks)
        return
    with ProcessPoolExecutor(
        workers, initializer=_init_worker, initargs=(backend, settings, str(out))
    ) as pool:
        pending: deque[Future] = deque()
        for chunk in chunks:
            pending.append(pool.submit(process_chunk, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
    """Records of the shards an interrupted run finished (their files exist); ``{}`` for a fresh start."""
    path = out / PROGRESS
    if not path.exists():
        if any(out.glob("*.tar")):
            raise DataError(f"{out}: holds shards but no {PROGRESS} / {MANIFEST}; choose another --out")
        path.write_text(json.dumps(asdict(settings)) + "\n")
        return {}
    lines = path.read_text().splitlines()
    if not lines or json.loads(lines[0]) != asdict(settings):
        raise DataError(f"{path}: an interrupted preparation with other settings; choose another --out")
    records = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption: that shard is redone
            log.warning("%s: line %d incomplete, its shard is prepared again", path, number)
            continue
        if record["sequences"] == 0 or (out / record["name"]).exists():
            records[record["index"]] = record
    log.info("%s: resuming, %d shards already done", out, len(records))
    return records


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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished preparation; raises :class:`DataError` when there is none."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        hint = " (preparation unfinished: run prepare again)" if (Path(shard_dir) / PROGRESS).exists() else ""
        raise DataError(f"{path}: no manifest{hint}; create it with `pretrain-distill prepare`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="KIND:PATH[#k=v,...]",
        help="a corpus to read (repeatable; see above)",
    )
    parser.add_argument("--out", required=True, help="output directory for the shards and manifest.json")
    parser.add_argument(
        "--tokenizer",
        default="minilm",
        help="fast tokenizer: a HF directory / name, or 'minilm' (the teacher's; default)",
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument(
        "--shard-chars",
        type=int,
        default=32_000_000,
        help="input characters per shard (default 32M: ~7M tokens, ~14 MB)",
    )
    parser.add_argument("--block-size", type=int, default=256, help="sequences per tar member (default 256)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the in-shard sequence shuffle (default 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = prepare_shards(  # a DataError ends as one line from the CLI, exit 2
        args.source,
        args.out,
        args.tokenizer,
        args.max_length,
        args.workers,
        args.shard_chars,
        args.block_size,
        args.seed,
        progress=not args.no_progress,
    )
    totals = manifest["totals"]
    print(
        f"{args.out}: {len(manifest['shards'])} shards, {totals['sequences']} sequences, {totals['tokens']} tokens, "
        f"languages {sorted(manifest['languages'])}, {manifest['last_run']['seconds']:.1f} s"
    )
    return 0
