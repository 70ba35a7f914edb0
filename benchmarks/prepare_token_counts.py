"""What recording token counts costs `prepare`: the same preparation with and without counting, side by
side (alternating runs, fresh output directories, one worker: everything in this process), on the
embedded English Wikipedia dump (markup-bound) and on the movie sentences as plain text (tokenizer-bound:
the case where counting weighs most).

Prints a Markdown table of the median CPU seconds of this process (robust on a shared machine) and wall
seconds of each, and the ratios, with the machine and library versions. Counting is an `np.bincount` of
each chunk's packed rows plus one merge at the end.

  .venv/bin/python benchmarks/prepare_token_counts.py                # 5 x 2 runs per corpus, ~3 minutes
  .venv/bin/python benchmarks/prepare_token_counts.py --repeats 9
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

from pretrain_distill.core.assets import movie_sentences_path, wikipedia_dump_path
from pretrain_distill.data import prepare_shards
from pretrain_distill.data.token_counts import count_tokens


def timed_prepare(source: str, out: Path, count_tokens: bool) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, tokens) of one preparation into the fresh directory ``out``."""
    cpu, wall = time.process_time(), time.perf_counter()
    manifest = prepare_shards(
        [source],
        out,
        tokenizer="minilm",
        max_length=128,
        workers=1,
        shard_chars=400_000,  # several chunks, as on a real corpus
        progress=False,
        count_tokens=count_tokens,
    )
    return time.process_time() - cpu, time.perf_counter() - wall, manifest["totals"]["tokens"]


def counting_alone(rows: int = 4096, length: int = 128, vocab: int = 30522, repeats: int = 20) -> float:
    """Milliseconds per million tokens of ``count_tokens`` alone, on random packed rows."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (rows, length)).astype(np.uint16)
    lengths = rng.integers(length // 2, length + 1, rows).astype(np.int32)
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    start = time.process_time()
    for _ in range(repeats):
        count_tokens(ids, lengths, vocab, pad_id=0)
    return 1000 * (time.process_time() - start) / repeats / (lengths.sum() / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        text = Path(tmp) / "movies.txt"
        lines = movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines()
        text.write_text("\n".join(line.split("\t")[-1] for line in lines) + "\n")
        corpora = {
            "Wikipedia dump (markup)": f"wikipedia:{wikipedia_dump_path()}",
            "movie sentences (plain text)": f"text:{text}#doc=line",
        }
        print(
            "| corpus | tokens | token counts | median CPU s (min-max) | median wall s | tokens per CPU s | "
            "CPU ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, source in corpora.items():
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for repeat in range(args.repeats):
                for count in (False, True) if repeat % 2 == 0 else (True, False):  # alternate the order
                    cpu, wall, tokens = timed_prepare(source, Path(tmp) / f"{name}-{repeat}-{count}", count)
                    runs[count].append((cpu, wall))
            base = statistics.median(c for c, _ in runs[False])
            for count in (False, True):
                cpus = [c for c, _ in runs[count]]
                cpu, wall = statistics.median(cpus), statistics.median(w for _, w in runs[count])
                label = "with" if count else "without"
                print(
                    f"| {name} | {tokens:,} | {label} | {cpu:.2f} ({min(cpus):.2f}-{max(cpus):.2f}) | "
                    f"{wall:.2f} | {tokens / cpu:,.0f} | {cpu / base:.3f} |"
                )
    print()
    print(f"{args.repeats} runs of each, alternating; one worker (all in this process)")
    print(f"count_tokens alone: {counting_alone():.2f} CPU ms per million tokens")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}, tokenizers "
        f"{tokenizers.__version__}, transformers {transformers.__version__}"
    )


if __name__ == "__main__":
    main()
