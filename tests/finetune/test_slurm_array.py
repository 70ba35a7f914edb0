"""slurm/finetune_array.sbatch with stand-in srun / finetune: the log path needs no folder, srun gets
--cpus-per-task, and each array index runs its own sweep job."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "slurm" / "finetune_array.sbatch"

FAKE = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
if [ "$(basename "$0")" = srun ]; then
    while [[ "$1" == --* ]]; do shift; done
    exec "$@"
fi
"""


def test_array_script_runs_its_index_with_the_cpus(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "finetune"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    env = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls.txt"),
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_CPUS_PER_TASK": "3",
    }
    args = ["--model", "M", "--tasks", "sst2", "mrpc", "--seeds", "1", "2", "3"]
    subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, check=True)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [
        "srun --cpus-per-task=3 finetune sweep " + " ".join(args) + " --no-progress --index 4",
        "finetune sweep " + " ".join(args) + " --no-progress --index 4",
    ]
    output = re.search(r"^#SBATCH --output=(\S+)$", SCRIPT.read_text(), re.M).group(1)
    assert "/" not in output  # SLURM opens it before the script runs: no folder to create
