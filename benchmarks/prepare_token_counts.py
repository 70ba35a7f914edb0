"""What recording token counts costs `prepare`: the same preparation with and without counting, side by
side (alternating runs, fresh output directories), on the embedded English Wikipedia dump.

Prints a Markdown table (median wall seconds and tokens/s of each, and the ratio) with the machine and
library versions. Counting is a `np.bincount` of each chunk's packed rows plus one merge at the end.

  .venv/bin/python benchmarks/prepare_token_counts.py                # 3 x 2 runs, ~2 minutes on 2 cores
  .venv/bin/python benchmarks/prepare_token_counts.py --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tokenizers
import transformers

from pretrain_distill.core.assets import wikipedia_dump_path
from pretrain_distill.data import prepare_shards


def timed_prepare(out: Path, count_tokens: bool, workers: int, max_length: int) -> tuple[float, int]:
    """Wall seconds and tokens of one preparation into the fresh directory ``out``."""
    start = time.perf_counter()
    manifest = prepare_shards(
        [f"wikipedia:{wikipedia_dump_path()}"],
        out,
        tokenizer="minilm",
        max_length=max_length,
        workers=workers,
        shard_chars=400_000,  # several chunks, as on a real corpus
        progress=False,
        count_tokens=count_tokens,
    )
    return time.perf_counter() - start, manifest["totals"]["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens = 0
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        for repeat in range(args.repeats):
            for count in (False, True) if repeat % 2 == 0 else (True, False):  # alternate the order
                seconds, tokens = timed_prepare(
                    Path(tmp) / f"{repeat}-{count}", count, args.workers, args.max_length
                )
                times[count].append(seconds)
    base, counted = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"prepare, English Wikipedia test dump ({tokens:,} tokens), {args.workers} worker(s), {args.repeats} runs each"
    )
    print()
    print("| prepare | median s | tokens/s | all runs (s) |")
    print("|---|---|---|---|")
    for label, key in (("without token counts", False), ("with token counts", True)):
        median = statistics.median(times[key])
        runs = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"| {label} | {median:.2f} | {tokens / median:,.0f} | {runs} |")
    print()
    print(
        f"ratio with / without: {counted / base:.3f} (wall time; < 1 + run-to-run spread = no measurable cost)"
    )
    spread = max(np.ptp(times[False]), np.ptp(times[True])) / base
    print(f"run-to-run spread: {100 * spread:.1f}% of the median")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python "
        f"{platform.python_version()}, numpy {np.__version__}, tokenizers {tokenizers.__version__}, "
        f"transformers {transformers.__version__}"
    )


if __name__ == "__main__":
    main()
