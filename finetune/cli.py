"""``finetune``: the downstream stage's command line (GLUE, XNLI, custom tasks, task distillation)."""

from __future__ import annotations

from collections.abc import Sequence

from pretrain_distill.core.command_line import run_cli

DESCRIPTION = """Fine-tune and task-distil encoders; tables like the papers'.

Typical flow:
  finetune train --model minilm --task sst2 --data-dir glue_data --seeds 1 2 3
  finetune distill --teacher runs/finetune/sst2/minilm/seed1/model --student runs/distill/export \\
      --task sst2 --method rail_c --data-dir glue_data
  finetune sweep --model runs/distill/export --tasks cola sst2 mrpc stsb qqp mnli qnli rte --data-dir glue_data \\
      --lr 3e-5                              # any config field as --key value or key=value, anywhere
  finetune report runs/finetune --out reports
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("finetune.commands.train", "fine-tune a model on a task (one run per seed)"),
    "sweep": ("finetune.commands.sweep", "tasks x seeds, locally or as a SLURM array"),
    "distill": ("finetune.commands.distill", "task-specific KD: vanilla, pkd, rail_l, rail_c, ild_rtc"),
    "report": ("finetune.commands.report", "Markdown/CSV tables and a bar chart from stored runs"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("finetune", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
