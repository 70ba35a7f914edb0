"""Student search: a short HS distillation of each candidate shape, ranked by the KD-NAS reward.

  pretrain-distill search --teacher minilm --shards runs/shards/wiki --steps 300 \\
      --candidates 3L 2,12,384,1536 3,12,192,768 2,6,192,768 --out runs/search

Each candidate (a preset name or a shape `L,A,H,F`, either after an encoder family of the teacher's
tokenizer: `modernbert:3,12,384,1024`; default: the student config's family, the teacher's) is distilled
by the engine (`pretrain-distill
train`'s Trainer) with HS transfer (eq. 6) for `--steps` steps on the same data, batch, seed and
schedule as every other candidate; then its validation HS loss L_HS is measured (eval mode, no
gradients, the first `--val-batches` batches of the held-out shards in a fixed seeded order) and its
latency (the `latency` command's measurement: bare encoder of the candidate's shape, random weights,
default CPU, batch 1 x 128 tokens, 1 thread), interleaved with the teacher's so that both see the same
load of a shared machine. The reward of Appendix C (after KD-NAS, Trivedi et al. 2023) ranks them:

    reward(S) = (1 - L_HS) * (lat(S) / (0.6 * lat(T))) ** -0.06

Validation data: `--val-shards DIR` (prepared with the same tokenizer); by default the held-out split
of `--shards` (`<shards>/validation/`, written by `prepare --validation-fraction F`) when there is one,
else the last `--holdout` shard(s) of `--shards` (manifest order), which then are not trained on (that
split is written as two small manifest views, symlinks to the shards, under `<out>/data/`).

The HS mapping defaults to `single` (the last student layer to the last teacher layer): L_HS is then one
MSE for every depth, whereas a 1-to-1 mapping sums one MSE per student layer and so penalises deeper
candidates. `--mapping` changes it; YAML files and `section.key=value` overrides change any other run
setting (the objective must stay HS only: the reward reads L_HS).

Output (in `--out`): `search.json` (settings, one record per finished candidate),
`search.md` (the ranked table), `candidates/[<family>-]<shape>/` (each candidate's run directory). Running the same
command again resumes: finished candidates are not re-run, a candidate stopped mid-way continues from its
last checkpoint (train.resume=auto), new candidates are added; other settings than the candidates must
be unchanged (error otherwise). Every candidate is checked before any training: a bad shape (heads not
dividing hidden, non-positive sizes), a duplicate, a mapping or initialisation the teacher's depth or
width does not allow, stops the search with one line per rejected candidate.

Exit codes: 0 done; 2 bad arguments; 75 preempted by SIGTERM / SIGUSR1 after a checkpoint (rerun).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pretrain_distill.commands.latency import add_settings_arguments, settings_from_args
from pretrain_distill.core.command_line import add_config_arguments
from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.core.distributed import detect_env, require_device
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.core.overrides import command_line_overrides
from pretrain_distill.search import STATE_FILE, TABLE_FILE, SearchSettings, markdown_table, search


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "--teacher", required=True, help="teacher model directory, or minilm (the embedded one)"
    )
    parser.add_argument("--shards", required=True, help="directory written by `pretrain-distill prepare`")
    parser.add_argument(
        "--candidates",
        nargs="+",
        required=True,
        metavar="SPEC",
        help="presets (3L, 4L, ...) or shapes L,A,H,F, optionally after a family (modernbert:3L)",
    )
    parser.add_argument("--steps", type=int, required=True, help="HS distillation steps per candidate")
    parser.add_argument("--out", default="runs/search", help="search directory (default: runs/search)")
    parser.add_argument(
        "--val-shards",
        help="validation shards (default: <shards>/validation when prepared, else the last --holdout shards)",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=1,
        help="shards of --shards held out without a validation split (default 1)",
    )
    parser.add_argument("--val-batches", type=int, default=16, help="validation batches (default 16)")
    parser.add_argument(
        "--batch", type=int, default=32, help="training / validation micro batch (default 32)"
    )
    parser.add_argument("--mapping", default="single", help="HS layer mapping (default: single)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device")
    add_config_arguments(parser)
    group = parser.add_argument_group("latency (see `pretrain-distill latency --help`)")
    add_settings_arguments(group, prefix="latency-")


def run(args: argparse.Namespace) -> int:

    quiet_libraries()
    require_device(args.device, "--device")  # before anything is written
    if detect_env().world_size > 1:
        raise ConfigError(
            "search runs in one process (candidates one after the other): launch it without torchrun"
        )
    for name in ("steps", "holdout", "val_batches", "batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    settings = SearchSettings(
        teacher=args.teacher,
        shards=args.shards,
        val_shards=args.val_shards,
        holdout=args.holdout,
        steps=args.steps,
        batch=args.batch,
        val_batches=args.val_batches,
        mapping=args.mapping,
        device=args.device,
        configs=tuple(args.config),
        overrides=tuple(command_line_overrides(args)),
        latency=settings_from_args(args, prefix="latency-"),
    )
    out = Path(args.out)
    state = search(settings, args.candidates, out)  # preempted: exit 75 (the CLI)
    print(markdown_table(state), end="")
    print(f"search: {out / STATE_FILE}, {out / TABLE_FILE}")
    return 0
