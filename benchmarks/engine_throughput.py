"""Throughput of the real ``pretrain-distill train`` loop beside the bare Distiller step, in one run.

**Engine** rows run :class:`pretrain_distill.engine.Trainer` as the CLI does: the loader over real
shards (the embedded Wikipedia dump, prepared once at ``--seq`` tokens, or ``--shards``), MLM masking
when the objective needs it, DeepSpeed ZeRO-2 (bf16 on GPU), a log line every 10 steps and one
checkpoint (at the end; its time is its own column). Tokens/s counts real (non-padding) tokens between
the first log line after ``--warmup-steps`` and the last one. **Bare** rows are the Distiller step of
``benchmarks/distill_throughput.py`` at the same shape (batch x seq random ids, bf16 autocast on GPU,
plain ``loss.backward(); AdamW.step()``). ``x bare`` = tokens/s / the bare step's with torch's default
AdamW (as distill_throughput.py runs it); ``x bare fused`` = the same against the bare step with the
fused AdamW the engine uses.

Each speed lever is an engine row with one option changed against the first engine row:

  compile        train.compile=<--compile-backend> (torch.compile of every student and teacher layer)
  teacher-fp32   teacher.dtype=fp32 (the default ``auto`` is bf16 weights on GPU, fp32 on CPU)
  teacher-bf16   teacher.dtype=bf16
  micro-x2       twice the micro-batch
  zero0          DeepSpeed ZeRO stage 0 instead of 2
  sync           a host read of every loss term per micro-batch, as the loop did before (the cost of
                 the synchronisations the loop no longer makes)

and the bare step with torch's fused AdamW is a row of its own (the engine always uses it).

On CPU the times are process CPU-seconds (one torch thread, loader in-process: ``num_workers=0``), so
the rows stay meaningful on a shared machine; on GPU wall-clock seconds between synchronisations.

  python benchmarks/engine_throughput.py                       # GPU: 128 x 256, BERT-base -> 6L, MiniLMv2
  python benchmarks/engine_throughput.py --device cpu --batch 8 --seq 64 --teacher-layers 4 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertForMaskedLM

from pretrain_distill.core.assets import teacher_path, wikipedia_dump_path
from pretrain_distill.core.command_line import run_script
from pretrain_distill.core.distributed import launcher_env_scope, require_device
from pretrain_distill.engine.signals import PreemptionFlag
from pretrain_distill.engine.trainer import Trainer
from pretrain_distill.models import PRESETS, build_student
from pretrain_distill.run_config import load_run_config

LOG_EVERY = 10
LEVERS = ("compile", "teacher-fp32", "teacher-bf16", "micro-x2", "zero0", "sync")


def _throughput_module():
    path = Path(__file__).with_name("distill_throughput.py")
    spec = importlib.util.spec_from_file_location("distill_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bare = _throughput_module()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=128, help="micro-batch (sequences)")
    p.add_argument("--seq", type=int, default=256, help="sequence length of the prepared shards")
    p.add_argument("--teacher-layers", type=int, default=12)
    p.add_argument("--teacher-hidden", type=int, default=768)
    p.add_argument("--teacher-heads", type=int, default=12)
    p.add_argument("--teacher-ffn", type=int, default=3072)
    p.add_argument("--student", default="6L", help="a preset")
    p.add_argument("--objective", default="minilmv2", choices=["hs", "minilmv2", "od"])
    p.add_argument("--relation-heads", type=int, default=48)
    p.add_argument("--warmup-steps", type=int, default=LOG_EVERY, help="a multiple of 10")
    p.add_argument("--steps", type=int, default=50, help="measured steps, a multiple of 10")
    p.add_argument("--levers", default="", help=f"comma-separated engine rows to add: {', '.join(LEVERS)}")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--shards", default="", help="prepared shards (default: the Wikipedia dump at --seq)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 2 on GPU, 0 on CPU)")
    p.add_argument("--threads", type=int, default=1, help="CPU only: torch threads")
    p.add_argument("--out", default="", help="work folder, shards reused (default: a temporary one)")
    args = p.parse_args(argv)
    for name in filter(None, args.levers.split(",")):
        if name not in LEVERS:
            p.error(f"--levers: unknown lever {name!r}; levers: {', '.join(LEVERS)}")
    if args.warmup_steps % LOG_EVERY or args.steps % LOG_EVERY or args.steps < LOG_EVERY:
        p.error("--warmup-steps and --steps must be multiples of 10 (the log interval), --steps >= 10")
    return args


def _clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class _TimedTrainer(Trainer):
    """The real Trainer, recording (clock, tokens) at each log line and the checkpoint's duration;
    ``read_each_micro_batch`` brings back the old loop's host read of every loss term."""

    device_kind = "cpu"
    read_each_micro_batch = False

    def _log(self, interval, lr, grad_norm, logger):
        metrics = super()._log(interval, lr, grad_norm, logger)
        self.marks.append((self.state.step, _clock(self.device_kind), self.state.tokens))
        return metrics

    def save(self):
        start = _clock(self.device_kind)
        path = super().save()
        self.checkpoint_s = _clock(self.device_kind) - start
        return path

    def _micro_step(self, batch):
        losses, tokens = super()._micro_step(batch)
        if self.read_each_micro_batch:
            [float(v.detach()) for v in losses.values()]
        return losses, tokens


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """A random-weight BERT teacher of the given shape (with the MiniLM tokenizer) and the shards."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_path())
    t_cfg = bare.teacher_config(args, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    teacher_dir = work / "teacher"
    BertForMaskedLM(t_cfg).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    if args.shards:
        return teacher_dir, Path(args.shards)
    from pretrain_distill.data import prepare_shards

    shards = work / f"shards-{args.seq}"
    if (shards / "manifest.json").is_file():  # prepared by an earlier run into the same --out
        return teacher_dir, shards
    source = f"wikipedia:{wikipedia_dump_path()}"
    prepare_shards([source], shards, tokenizer, max_length=args.seq, workers=1, progress=False)
    return teacher_dir, shards


def engine_overrides(args, teacher: Path, shards: Path, out: Path, lever: str) -> list[str]:
    precision = "bf16" if args.device == "cuda" else "fp32"
    objective = bare.objective_config(args.objective, args.relation_heads)
    total = args.warmup_steps + args.steps
    overrides = [
        f"teacher.path={teacher}",
        f"student.preset={args.student}",
        f"objective.weights={objective.weights}",
        f"objective.teacher_layer={objective.teacher_layer}",
        f"objective.relation_heads={objective.relation_heads}",
        f"data.shards={shards}",
        f"data.num_workers={args.workers if args.workers is not None else (2 if args.device == 'cuda' else 0)}",
        f"train.output_dir={out}",
        f"train.device={args.device}",
        f"train.precision={precision}",
        "train.deepspeed=deepspeed/zero2.json",
        f"train.micro_batch_size={args.batch}",
        f"train.max_steps={total}",
        f"train.log_every={LOG_EVERY}",
        f"train.save_every={total}",  # one checkpoint, at the end
        "train.export=false",
    ]
    extra = {
        "compile": [f"train.compile={args.compile_backend}"],
        "teacher-fp32": ["teacher.dtype=fp32"],
        "teacher-bf16": ["teacher.dtype=bf16"],
        "micro-x2": [f"train.micro_batch_size={2 * args.batch}"],
        "zero0": ["train.deepspeed=deepspeed/zero0.json"],
    }
    return overrides + extra.get(lever, [])


def run_engine(args, teacher: Path, shards: Path, out: Path, lever: str) -> dict[str, float]:
    cfg = load_run_config(overrides=engine_overrides(args, teacher, shards, out, lever))
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with launcher_env_scope(), PreemptionFlag() as preemption:
        trainer = _TimedTrainer(cfg)
        trainer.device_kind = args.device
        trainer.read_each_micro_batch = lever == "sync"
        trainer.marks = []
        trainer.fit(preemption)
    marks = [m for m in trainer.marks if m[0] >= args.warmup_steps]
    (step0, clock0, tokens0), (step1, clock1, tokens1) = marks[0], marks[-1]
    seconds = clock1 - clock0
    result = {
        "tokens_per_s": (tokens1 - tokens0) / seconds,
        "step_ms": 1e3 * seconds / (step1 - step0),
        "checkpoint_s": trainer.checkpoint_s,
        "mem": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
    }
    del trainer
    gc.collect()
    return result


def run_bare(args, fused: bool | None) -> dict[str, float]:
    """The Distiller step of distill_throughput.py at the engine's shape (median of --steps steps)."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    t_cfg = bare.teacher_config(args)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(t_cfg).eval().to(args.device, dtype=dtype).requires_grad_(False)
    student = build_student(PRESETS[args.student], t_cfg).to(args.device).train()
    step = bare.ours_step_fn(args.objective, teacher, student, args, fused=fused)
    shape = argparse.Namespace(
        device=args.device, batch=args.batch, seq=args.seq, warmup=3, iters=min(args.steps, 10)
    )
    seconds, mem = bare.measure(step, shape, dtype)
    return {"tokens_per_s": args.batch * args.seq / seconds, "step_ms": 1e3 * seconds, "mem": mem}


def _versions() -> str:
    import deepspeed

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return (
        f"device: {device}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, DeepSpeed {deepspeed.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_device(args.device, "--device")  # the GPU defaults on a CPU: refused before any work
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    levers = [name for name in args.levers.split(",") if name]
    with contextlib.ExitStack() as stack:
        work = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        teacher, shards = prepare(args, work)
        print(_versions())
        print(
            f"command: python benchmarks/engine_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}"
        )
        print(
            f"{args.objective}, BERT {args.teacher_layers}L-{args.teacher_hidden} teacher (random weights) -> "
            f"{args.student}; micro-batch {args.batch} x {args.seq}; {args.warmup_steps} warm-up + "
            f"{args.steps} measured steps; "
            + (
                "wall-clock seconds"
                if args.device == "cuda"
                else "process CPU-seconds (tokens per CPU-second)"
            )
        )
        print()
        print("| row | tokens/s | x bare | x bare fused | step ms | checkpoint s | peak mem GiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = run_bare(args, fused=None)
        base_fused = run_bare(args, fused=True)

        def row(label: str, r: dict[str, float]) -> None:
            mem = "n/a" if r["mem"] is None else f"{r['mem']:.1f}"
            ckpt = f"{r['checkpoint_s']:.2f}" if "checkpoint_s" in r else ""
            ratios = [r["tokens_per_s"] / b["tokens_per_s"] for b in (base, base_fused)]
            print(
                f"| {label} | {r['tokens_per_s']:,.0f} | {ratios[0]:.2f} | {ratios[1]:.2f} | "
                f"{r['step_ms']:.1f} | {ckpt} | {mem} |",
                flush=True,
            )

        row("bare Distiller step (AdamW default)", base)
        row("bare Distiller step, fused AdamW", base_fused)
        for name in ["engine", *levers]:
            label = "engine (Trainer, ZeRO-2)" if name == "engine" else f"engine + {name}"
            row(label, run_engine(args, teacher, shards, work / f"run-{name}", name))


if __name__ == "__main__":
    raise SystemExit(run_script(main, "engine_throughput.py"))  # a mistake: one line, exit 2
