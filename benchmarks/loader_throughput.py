"""Loader and prepare throughput against the target per-GPU demand, and against the naive way.

Measures, on this machine:
  prepare   tokens/s of `prepare_shards` (read + strip markup + tokenize + pack + write) on the real
            English Wikipedia dump cut into 8 split parts (8 units of work), with 1, 2 and --workers
            workers (wall rate and speed-up over 1 worker, and per CPU-second), and on the same text
            without markup (a `text:` source: the tokenizer-bound case of CC100 / BookCorpus);
  stream    sequences/s and tokens/s (real, non-padding tokens) of `build_dataloader` batches on one
            core (num_workers=0, in-process) and with --workers DataLoader workers;
  naive     a DataLoader over raw (already markup-free) text that tokenizes every batch on the fly
            with the HF fast tokenizer (truncate + pad to max length) in one core;
and prints a markdown table with the ratio of each to one H100's demand (--gpu-demand tokens/s).

  .venv/bin/python benchmarks/loader_throughput.py             # ~1-2 minutes on 2 cores
  .venv/bin/python benchmarks/loader_throughput.py --workers 8 --seconds 20
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
import webdataset
from torch.utils.data import DataLoader, IterableDataset

from pretrain_distill.core.assets import teacher_path, wikipedia_dump_path
from pretrain_distill.core.command_line import run_script
from pretrain_distill.data.prepare import available_cpus, prepare_shards
from pretrain_distill.data.stream import build_dataloader
from pretrain_distill.data.wikipedia import read_wikipedia_dump
from pretrain_distill.run_config import DataConfig


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the prepare workers)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def time_prepare(source: str, out: Path, workers: int, max_length: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tokens) of one preparation."""
    start, cpu = time.perf_counter(), cpu_seconds()
    manifest = prepare_shards(
        [source], out, "minilm", max_length, workers, shard_chars=200_000, progress=False
    )
    return time.perf_counter() - start, cpu_seconds() - cpu, manifest["totals"]["tokens"]


def split_dump(dump: Path, out: Path, parts: int) -> Path:
    """The dump's pages dealt into ``parts`` split files named like enwiki's (``...1.xml-p1p2.bz2``)."""
    text = bz2.open(dump, "rt", encoding="utf-8").read()
    header = text[: text.index("<page>")]
    pages = re.findall(r"<page>.*?</page>", text, flags=re.DOTALL)
    out.mkdir()
    for k in range(parts):
        name = f"enwiki-latest-pages-articles{k + 1}.xml-p{k}p{k + 1}.bz2"
        with bz2.open(out / name, "wt", encoding="utf-8") as f:
            f.write(header + "\n".join(pages[k::parts]) + "\n</mediawiki>\n")
    return out


def repeat_shards(shards: Path, out: Path, times: int) -> Path:
    """A shard directory listing every shard ``times`` times (symlinks): long epochs from a small corpus."""
    manifest = json.loads((shards / "manifest.json").read_text())
    out.mkdir()
    entries = []
    for k in range(times):
        for entry in manifest["shards"]:
            name = f"r{k:03d}-{entry['name']}"
            (out / name).symlink_to((shards / entry["name"]).resolve())
            entries.append({**entry, "name": name})
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": entries}))
    return out


def time_batches(batches: Iterator[dict[str, torch.Tensor]], seconds: float) -> tuple[float, int, int]:
    """(elapsed, sequences, real tokens) of iterating ``batches`` for about ``seconds``."""
    next(batches)  # worker start-up is not throughput
    sequences = tokens = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(batches)
        sequences += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
    return time.perf_counter() - start, sequences, tokens


def stream_forever(shards: Path, workers: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    loader = build_dataloader(
        DataConfig(shards=str(shards), num_workers=workers), batch_size, rank=0, world_size=1, seed=0
    )
    while True:  # epochs advance by themselves
        yield from loader


class RawText(IterableDataset):
    """The naive baseline's dataset: raw text passages, split over DataLoader workers."""

    def __init__(self, passages: list[str]) -> None:
        self.passages = passages

    def __iter__(self) -> Iterator[str]:
        info = torch.utils.data.get_worker_info()
        start, step = (info.id, info.num_workers) if info else (0, 1)
        while True:
            yield from self.passages[start::step]


def naive_forever(passages: list[str], batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher_path())

    def collate(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            tokenizer(
                texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
            )
        )

    yield from DataLoader(RawText(passages), batch_size=batch_size, collate_fn=collate, num_workers=0)


def progress(step: int, steps: int, what: str) -> None:
    """One line on stderr per measurement: the run takes minutes, the table comes at the end."""
    print(f"loader_throughput: [{step}/{steps}] {what}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="per stream measurement")
    parser.add_argument("--gpu-demand", type=float, default=1.5e6, help="tokens/s one H100 trains on")
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core means one core
    dump = wikipedia_dump_path()
    work = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    rows: list[tuple[str, float, float, str]] = []
    try:
        texts = [d.text for d in read_wikipedia_dump(dump)]
        plain = work / "wiki.txt"
        plain.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts) + "\n")
        parts = split_dump(dump, work / "split", 8)
        preparations = [(f"wikipedia:{parts}", w, "wiki markup") for w in sorted({1, 2, args.workers})]
        one_worker = None
        steps = len(preparations) + 4  # + plain text and the three stream rows
        for source, workers, what in preparations + [(f"text:{plain}#language=en", 1, "plain text")]:
            progress(len(rows) + 1, steps, f"prepare {what}, {workers} worker(s)")
            out = work / f"prepared-{len(rows)}"
            seconds, cpu, tokens = time_prepare(source, out, workers, args.max_length)
            one_worker = one_worker or seconds
            speed_up = f", x{one_worker / seconds:.2f} vs 1 worker" if what == "wiki markup" else ""
            note = f"{seconds:.1f} s wall, {tokens / seconds:,.0f} tok/s wall in all{speed_up}"
            rows.append(
                (f"prepare {what}, {workers} worker(s), per CPU-second", float("nan"), tokens / cpu, note)
            )
        shards = repeat_shards(work / "prepared-0", work / "long", 50)
        passages = [p for t in texts for p in t.split("\n\n") if len(p) > 200]
        runs = {
            "stream, 1 core (num_workers=0)": stream_forever(shards, 0, args.batch_size),
            f"stream, {args.workers} DataLoader workers": stream_forever(
                shards, args.workers, args.batch_size
            ),
            "naive: HF tokenizer in the DataLoader, 1 core": naive_forever(
                passages, args.batch_size, args.max_length
            ),
        }
        for name, batches in runs.items():
            progress(len(rows) + 1, steps, f"{name}, {args.seconds:g} s")
            elapsed, sequences, tokens = time_batches(batches, args.seconds)
            rows.append((name, sequences / elapsed, tokens / elapsed, f"{sequences} seqs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    naive = rows[-1][2]
    print(
        f"\nMachine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, torch {torch.__version__},"
    )
    print(
        f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, webdataset "
        f"{webdataset.__version__}, numpy {np.__version__}. Corpus: gensim's enwiki dump (106 articles), "
        f"max_length {args.max_length}, batch {args.batch_size}.\n"
    )
    print(
        f"| what | sequences/s | tokens/s | x one H100 ({args.gpu_demand / 1e6:g}M tok/s) | x naive | measured |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, seq_rate, tok_rate, note in rows:
        seqs = "" if np.isnan(seq_rate) else f"{seq_rate:,.0f}"
        print(
            f"| {name} | {seqs} | {tok_rate:,.0f} | {tok_rate / args.gpu_demand:.2f} | {tok_rate / naive:.1f} | {note} |"
        )


if __name__ == "__main__":
    raise SystemExit(run_script(main, "loader_throughput.py"))  # a mistake: one line, exit 2
