"""The main job, end to end on the embedded real assets (what `make demo` runs).

  1. assets     the all-MiniLM-L6-v2 teacher, an English Wikipedia dump, 10,605 movie sentences
  2. prepare    Wikipedia -> packed webdataset shards
  3. distill    MiniLMv2 (teacher layer L_T-1) into a 3-layer student (192 wide on CPU, 384 on GPU)
  4. export     the student as a Hugging Face model directory (+ loss-curve plot)
  5. fine-tune  teacher, distilled student and the same student from random init on the movie
                sentences (binary sentiment, held-out split)
  6. report     a results table (with each model's CPU latency), and where the model, logs and plot are

Profiles: `cpu` (default without a GPU: about 12 minutes on 2 cores; a 3-layer x 192 student), `gpu`
(default with one: the setting of the H100 study in docs/results.md, 1,500 steps of 32 x 256 tokens into
the 3-layer x 384 student `3L`, fine-tuning on 2,000 sentences with 3 seeds; 5-6.5 minutes per run on
an H100 shared by 3-10 runs), `tiny` (seconds; what the integration test runs).
`--objectives` distils one student per objective config (configs/objectives/) and fine-tunes each:
the paper's comparison at small scale (docs/results.md). `od` runs as the paper's second stage: from the
export of the objective listed before it (an HS one), against the teacher with an MLM head fitted
first (`pretrain-distill fit-mlm-head`, as many steps as the distillation), e.g.
`--objectives hs_uniform od`. Preempted (SIGTERM / SIGUSR1) while distilling, it saves a checkpoint and
exits 75; the same command again continues where it stopped.

  pretrain-distill demo                               # or: make demo
  pretrain-distill demo --profile tiny --out runs/demo-tiny
  make demo DEMO_ARGS="--device cuda"
  pretrain-distill demo --objectives hs_uniform hs_last minilmv2_lt1 direct_minilm --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from finetune.finetune_config import load_finetune_config
from finetune.jobs import run as run_finetune
from finetune.report import write_report
from pretrain_distill.core.assets import ASSETS, resolve_model_path, wikipedia_dump_path
from pretrain_distill.core.command_line import add_config_arguments
from pretrain_distill.core.console import quiet_libraries
from pretrain_distill.core.distributed import require_device
from pretrain_distill.core.overrides import command_line_overrides
from pretrain_distill.core.tokenizer_loading import load_tokenizer
from pretrain_distill.data import prepare_shards
from pretrain_distill.engine import train
from pretrain_distill.export import export_run
from pretrain_distill.export.encoder import exported_form
from pretrain_distill.latency import LatencySettings, latency_rows
from pretrain_distill.mlm_head import RECORD, fit_mlm_head
from pretrain_distill.models import build_student, spec_from_config, special_token_ids
from pretrain_distill.plot import plot_run
from pretrain_distill.run_config import RunConfig, load_run_config
from pretrain_distill.vocab import StudentVocab, cut_student, save_tokenizer


@dataclass(frozen=True)
class Profile:
    """How big the demo is: distillation length, sequence length, fine-tuning budget."""

    max_length: int  # distillation sequence length
    distill_steps: int
    distill_batch: int
    finetune_train: int | None  # training sentences (None = all of the training split)
    finetune_eval: int | None
    finetune_epochs: float
    finetune_batch: int
    seeds: tuple[int, ...]
    workers: int
    student: str  # default student config (configs/students/)


PROFILES = {
    "tiny": Profile(64, 3, 4, 48, 32, 1, 8, (1,), 0, "minilm_3x192"),
    "cpu": Profile(128, 500, 16, 4000, 1000, 2, 32, (1,), 1, "minilm_3x192"),
    "gpu": Profile(256, 1500, 32, 2000, None, 3, 32, (1, 2, 3), 1, "3L"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), help="default: gpu with CUDA, else cpu")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--steps", type=int, help="override the profile's distillation steps")
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["minilmv2_lt1"],
        metavar="NAME",
        help="objective configs (configs/objectives/NAME.yaml), one distilled student each "
        "(default: minilmv2_lt1)",
    )
    parser.add_argument(
        "--student",
        metavar="NAME",
        help="student config (configs/students/NAME.yaml; default: the profile's, minilm_3x192 = "
        "3 layers x 192 on cpu, 3L = 3 layers x 384 on gpu)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="fine-tuning seeds (default: the profile's)")
    parser.add_argument("--no-teacher", action="store_true", help="do not fine-tune the teacher")
    parser.add_argument(
        "--no-random-init",
        action="store_true",
        help="do not fine-tune the random-init baseline (when another run of the same student does)",
    )
    add_config_arguments(parser)  # YAML files and overrides of the distillation run config


def _stage(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def distill_config(
    run_dir: Path,
    student: str,
    objective: str,
    profile: Profile,
    device: str,
    shards: Path,
    extra: Sequence[str] = (),
    files: Sequence[str] = (),
) -> RunConfig:
    """The run config of one distillation: the student and objective configs, the user's files, the
    profile's settings, then ``extra`` overrides."""
    overrides = [
        f"data.shards={shards}",
        f"data.num_workers={profile.workers}",
        "data.shuffle_buffer=512",
        f"train.output_dir={run_dir}",
        f"train.max_steps={profile.distill_steps}",
        f"train.micro_batch_size={profile.distill_batch}",
        f"train.save_every={max(1, profile.distill_steps // 4)}",
        f"train.log_every={max(1, profile.distill_steps // 50)}",
        "train.precision=" + ("bf16" if device == "cuda" else "fp32"),
        f"train.device={device}",
        # bf16 under ZeRO-0 would check every gradient on the host; ZeRO-1 steps without a sync
        "train.deepspeed=deepspeed/" + ("zero1.json" if device == "cuda" else "zero0.json"),
        "objective.relation_heads=12",  # divides the teacher's 384 and the students' 192, 384, 576
    ]
    configs = [f"students/{student}", f"objectives/{objective}", *files]
    return load_run_config(configs, overrides + list(extra))


def od_stage(out: Path, shards: Path, profile: Profile, device: str, earlier: list[str]) -> list[str]:
    """Overrides for OD as a second stage: init from the last export so far, teacher with a fitted head."""
    teacher_mlm = out / "teacher_mlm"
    if not (teacher_mlm / RECORD).is_file():
        _stage(f"3/6 fit an MLM head on the frozen teacher ({profile.distill_steps} steps), for OD")
        record = fit_mlm_head(
            "minilm", str(shards), teacher_mlm, profile.distill_steps, profile.distill_batch, device=device
        )
        print(json.dumps(record, indent=1))
    return [f"teacher.path={teacher_mlm}", f"student.init_from={earlier[-1]}"]


def random_init_student(cfg: RunConfig, out: Path, distilled: Path) -> Path:
    """The distilled student's shape and vocabulary with fresh weights, written as an export is (base
    encoder, identity pooler, the ``distilled`` export's tokenizer): the no-distillation baseline."""
    teacher = resolve_model_path(cfg.teacher.path)
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(teacher)
    student = build_student(
        spec_from_config(cfg.student),
        AutoConfig.from_pretrained(teacher),
        family=cfg.student.family,
        token_ids=special_token_ids(tokenizer),
    )
    vocab = StudentVocab.load(distilled)
    if vocab is not None:
        cut_student(student, vocab)
    exported_form(student, with_mlm_head=False).save_pretrained(out)
    save_tokenizer(load_tokenizer(str(distilled)), distilled, out)
    return out


def model_latency(models: dict[str, str]) -> dict:
    """Each model's CPU latency row (batch 1 x 128 tokens, 1 thread), with its ratio to the teacher."""
    names = [name for name in models if name != "teacher"]
    rows = latency_rows([models[n] for n in names], "minilm", LatencySettings(warmup=2, repeats=10))
    return dict(zip([*names, "teacher"], rows))


def finetune_movies(model: str, name: str, out: Path, profile: Profile, device: str) -> list[Path]:
    """Fine-tune ``model`` on the movie sentences, one run per seed; returns the run directories."""
    cfg = load_finetune_config(
        [],
        [
            f"model={model}",
            "task=movies",
            f"run_name={name}",
            f"output_dir={out / 'finetune'}",
            f"seeds={list(profile.seeds)}",
            f"epochs={profile.finetune_epochs}",
            f"batch_size={profile.finetune_batch}",
            "max_length=64",
            "lr=1e-4",  # few sentences, 2 epochs: the paper's 2e-5 (for GLUE-size sets) underfits
            f"max_train_samples={'null' if profile.finetune_train is None else profile.finetune_train}",
            f"max_eval_samples={'null' if profile.finetune_eval is None else profile.finetune_eval}",
            f"device={device}",
            "select=last",  # the held-out split is reported, so it must not pick the epoch
            "save_model=false",
        ],
    )
    return run_finetune(cfg)


@dataclass(frozen=True)
class Request:
    """What the user asked the demo for (the command line, resolved)."""

    profile: Profile
    device: str
    out: Path
    student: str
    objectives: list[str]
    teacher: bool = True
    random_init: bool = True
    files: Sequence[str] = ()  # distillation run config files
    overrides: Sequence[str] = ()  # and overrides


def prepare(out: Path, profile: Profile) -> Path:
    """Stages 1-2: the assets, and the Wikipedia dump as shards (``out/shards``)."""
    _stage("1/6 assets")
    for asset in ASSETS.values():
        print(f"  {asset.name:<10} {asset.locate()}")
    _stage("2/6 prepare: Wikipedia -> shards")
    shards = out / "shards"
    prepare_shards(
        [f"wikipedia:{wikipedia_dump_path()}"], shards, tokenizer="minilm", max_length=profile.max_length
    )
    return shards


def distill_all(request: Request, shards: Path, models: dict[str, str]) -> tuple[dict, RunConfig]:
    """Stages 3-4: one distilled, exported and plotted student per objective (added to ``models``);
    returns ``{objective: (run dir, plots)}`` and the last run config."""
    profile, device, out = request.profile, request.device, request.out
    outputs = {}
    for objective in request.objectives:
        extra = list(request.overrides)
        if objective == "od":
            earlier = [models[o] for o in request.objectives if o in models]
            extra += od_stage(out, shards, profile, device, earlier)
        _stage(f"3/6 distill: {objective} into {request.student}, {profile.distill_steps} steps on {device}")
        run_dir = out / ("distill" if len(request.objectives) == 1 else f"distill-{objective}")
        cfg = distill_config(
            run_dir, request.student, objective, profile, device, shards, extra, request.files
        )
        train(cfg)
        _stage("4/6 export + plots")
        models[objective] = str(export_run(run_dir))
        outputs[objective] = (run_dir, plot_run(run_dir))
    return outputs, cfg


def report(request: Request, runs: dict[str, list[Path]], models: dict[str, str], outputs: dict) -> dict:
    """Stage 6: the report files, the table with each model's latency, where everything is; returns each
    model's mean held-out accuracy."""
    written = write_report([r for rs in runs.values() for r in rs], request.out / "report")
    scores = {
        name: [json.loads((r / "metrics.json").read_text())["scores"]["dev"] for r in rs]
        for name, rs in runs.items()
    }
    latency = model_latency(models)
    print()
    print(written["markdown"].read_text())
    seeds = len(request.profile.seeds)
    print(f"{'model':<16} held-out accuracy (x100, mean over {seeds} seed(s)), CPU latency")
    for name, values in scores.items():
        shape = "MiniLM-L6 teacher" if name == "teacher" else f"{request.student} student"
        ms, ratio = latency[name].stats.median_ms, latency[name].ratio
        print(
            f"{name:<16} {100 * statistics.mean(values):6.2f}   {ms:7.2f} ms ({ratio:.2f} x teacher)   {shape}"
        )
    print("latency: median of 10, batch 1 x 128 tokens, 1 CPU thread (`pretrain-distill latency`)")
    for objective, (run_dir, plots) in outputs.items():
        print(f"\n{objective}: model {run_dir / 'export'}")
        print(f"  logs {run_dir / 'logs'} (metrics.jsonl, tensorboard/); plots {', '.join(map(str, plots))}")
    print(f"report: {written['markdown']} ({written['png']})")
    return {name: statistics.mean(values) for name, values in scores.items()}


def main_job(request: Request) -> dict:
    """The whole demo; returns each model's mean held-out accuracy."""
    if request.objectives[:1] == ["od"]:
        raise ValueError(
            "od runs from a first-stage student: list an HS objective before it (--objectives hs_uniform od)"
        )
    for objective in request.objectives:  # every config mistake before any work
        distill_config(
            request.out, request.student, objective, request.profile, request.device, request.out,
            request.overrides, request.files,
        )  # fmt: skip
    start = time.time()
    shards = prepare(request.out, request.profile)
    models = {"teacher": "minilm"} if request.teacher else {}
    outputs, cfg = distill_all(request, shards, models)
    if request.random_init:
        distilled = Path(models[request.objectives[-1]])
        models["random-init"] = str(random_init_student(cfg, request.out / "random_init", distilled))
    _stage("5/6 fine-tune on the movie sentences (binary, held-out split)")
    runs = {}
    for name, path in models.items():
        print(f"  -- {name}", flush=True)
        runs[name] = finetune_movies(path, name, request.out, request.profile, request.device)
    _stage("6/6 report")
    scores = report(request, runs, models, outputs)
    print(f"total time: {time.time() - start:.0f} s")
    return scores


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    require_device(args.device, "--device")  # before any work
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = PROFILES[args.profile or ("gpu" if device == "cuda" else "cpu")]
    if args.profile == "gpu" and device == "cpu":
        print(
            "pretrain-distill demo: note: the gpu profile on a CPU takes hours (about 2 on 2 cores); "
            "the cpu profile takes about 12 minutes",
            file=sys.stderr,
        )
    if args.steps:
        profile = dataclasses.replace(profile, distill_steps=args.steps)
    if args.seeds:
        profile = dataclasses.replace(profile, seeds=tuple(args.seeds))
    request = Request(
        profile,
        device,
        Path(args.out),
        args.student or profile.student,
        args.objectives,
        teacher=not args.no_teacher,
        random_init=not args.no_random_init,
        files=tuple(args.config),
        overrides=tuple(command_line_overrides(args)),
    )
    scores = main_job(request)  # a failure ends as one line from the CLI (exit 2: a mistake, 1: otherwise)
    if "random-init" not in scores:
        return 0
    baseline = scores["random-init"]
    print()
    for objective in args.objectives:
        verdict = "beats" if scores[objective] > baseline else "does NOT beat"
        print(f"the {objective} student {verdict} the random-init student ", end="")
        print(f"({100 * scores[objective]:.2f} vs {100 * baseline:.2f})")
    return 0
