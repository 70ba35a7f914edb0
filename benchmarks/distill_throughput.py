"""Distillation step throughput: the naive Hugging Face way vs ours (Distiller: taps, truncated teacher,
SDPA, fused relation loss, MLM heads on the masked rows only), side by side in one run, for HS (uniform),
MiniLMv2 (L_T-1) and OD (masked positions; the teacher needs an MLM head, which the random one has).

One step = teacher forward (frozen, no grad) + student forward + backward + AdamW step, under bf16 autocast
on GPU (fp32 on CPU unless --dtype bf16). Naive = what a first implementation with the Hugging Face API
does: the full teacher with its MLM head and ``output_hidden_states=True, output_attentions=True`` (eager
attention), the student ``*ForMaskedLM`` with hidden states (and attentions), Q/K/V recomputed from the
returned hidden states, relation matrices materialised in fp32, OD from the full ``[B, T, V]`` logits of
both models, losses from the returned tensors.

On CPU the times are process CPU-seconds (``time.process_time``, one torch thread by default so that
OpenMP spin-waiting is not counted), so the table stays meaningful on a shared machine: tokens/s reads "tokens per CPU-second", the peak is a matmul's FLOP per
CPU-second. On GPU they are wall-clock seconds between ``torch.cuda.synchronize()`` calls.

MFU counts only the FLOPs a method needs: the teacher up to the deepest layer read (its MLM head on the
masked rows for OD only), the student encoder forward + backward (3x; with its MLM head on the masked rows
for OD), and the loss; the same count divides both methods' times. 15% of the real tokens are masked.

  python benchmarks/distill_throughput.py                                  # H100 defaults: 128 x 256, bf16
  python benchmarks/distill_throughput.py --device cpu --batch 8 --seq 64 --teacher-layers 6 --iters 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers
from transformers import BertConfig, BertForMaskedLM

from pretrain_distill.core.command_line import run_script
from pretrain_distill.core.distributed import require_device
from pretrain_distill.models import PRESETS, build_student
from pretrain_distill.objectives import Distiller, output_distribution_loss
from pretrain_distill.run_config import ObjectiveConfig

MASK_RATE = 0.15
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, spec sheets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument(
        "--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu"
    )
    p.add_argument("--teacher-layers", type=int, default=12)
    p.add_argument("--teacher-hidden", type=int, default=768)
    p.add_argument("--teacher-heads", type=int, default=12)
    p.add_argument("--teacher-ffn", type=int, default=3072)
    p.add_argument("--students", default="6L,3L", help="comma-separated presets")
    p.add_argument("--objectives", default="hs,minilmv2", help="comma-separated: hs, minilmv2, od")
    p.add_argument("--relation-heads", type=int, default=48)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument(
        "--threads", type=int, default=1, help="CPU only: torch threads (1: no OpenMP spin in CPU time)"
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="default: spec sheet (GPU) or measured (CPU)"
    )
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ FLOPs


def encoder_flops_per_token(layers: int, hidden: int, ffn: int, seq: int) -> float:
    """Forward matmul FLOPs per token of ``layers`` Transformer layers (projections, FFN, attention)."""
    return layers * (2 * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * seq * hidden)


def teacher_config(args: argparse.Namespace, **extra) -> BertConfig:
    """The random-weight teacher's shape from ``--teacher-{layers,heads,hidden,ffn}`` and ``--seq``."""
    return BertConfig(
        hidden_size=args.teacher_hidden,
        num_hidden_layers=args.teacher_layers,
        num_attention_heads=args.teacher_heads,
        intermediate_size=args.teacher_ffn,
        max_position_embeddings=max(512, args.seq),
        **extra,
    )


def needed_flops(objective: str, teacher: BertConfig, student: BertConfig, args: argparse.Namespace) -> float:
    """FLOPs one step needs (see module docstring)."""
    tokens = args.batch * args.seq
    head = 0.0
    if objective == "od":  # MLM heads (transform + decoder) on the masked rows, student fwd + bwd
        depth, loss = teacher.num_hidden_layers, 0.0
        per_row = lambda h: 2 * (h * h + h * teacher.vocab_size)  # noqa: E731
        head = MASK_RATE * (per_row(teacher.hidden_size) + 3 * per_row(student.hidden_size))
    elif objective == "hs":
        k = math.ceil(teacher.num_hidden_layers / student.num_hidden_layers)
        depth = min(teacher.num_hidden_layers, k * student.num_hidden_layers)
        loss = 3 * 2 * student.num_hidden_layers * student.hidden_size * teacher.hidden_size  # maps fwd+bwd
    else:
        depth = teacher.num_hidden_layers - 1
        # Q/K/V relations: A A^T for teacher (fwd) and student (fwd + bwd)
        loss = 3 * 2 * args.seq * (teacher.hidden_size + 3 * student.hidden_size)
    t = encoder_flops_per_token(depth, teacher.hidden_size, teacher.intermediate_size, args.seq)
    s = encoder_flops_per_token(
        student.num_hidden_layers, student.hidden_size, student.intermediate_size, args.seq
    )
    return tokens * (t + 3 * s + loss + head)


def peak_flops(args: argparse.Namespace, dtype: torch.dtype) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given"
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} spec"
    n = 1024 if args.device == "cpu" else 8192
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    for _ in range(2):
        a @ a
    start = _clock(args.device)
    reps = 5
    for _ in range(reps):
        a @ a
    _sync(args.device)
    return reps * 2 * n**3 / (_clock(args.device) - start), "measured matmul, per CPU-second"


# ------------------------------------------------------------------------------------------------ methods


def _qkv(layer: torch.nn.Module, hidden_in: torch.Tensor) -> list[torch.Tensor]:
    attn = layer.attention.self
    return [attn.query(hidden_in), attn.key(hidden_in), attn.value(hidden_in)]


def _naive_relation_loss(s_qkv, t_qkv, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Materialised fp32 relations, KL per valid row (the straightforward MiniLMv2 implementation)."""
    B, T, _ = s_qkv[0].shape
    key_mask = mask[:, None, None, :].bool()
    rows = mask.bool()[:, None, :].expand(B, heads, T)
    total = 0.0
    for s, t in zip(s_qkv, t_qkv):
        rel = []
        for x in (s, t):
            d_r = x.shape[-1] // heads
            h = x.float().view(B, T, heads, d_r).transpose(1, 2)
            scores = (h @ h.transpose(-1, -2)) / math.sqrt(d_r)
            rel.append(scores.masked_fill(~key_mask, -1e4).log_softmax(-1))
        kl = F.kl_div(rel[0], rel[1], log_target=True, reduction="none").sum(-1)
        total = total + kl[rows].mean()
    return total


def naive_step_fn(objective: str, teacher: BertForMaskedLM, student: BertForMaskedLM, args) -> Callable:
    t_cfg, s_cfg = teacher.config, student.config
    k = math.ceil(t_cfg.num_hidden_layers / s_cfg.num_hidden_layers)
    mapping = [min(k * i, t_cfg.num_hidden_layers) for i in range(1, s_cfg.num_hidden_layers + 1)]
    maps = torch.nn.ModuleList(torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size) for _ in mapping).to(
        args.device
    )
    params = list(student.parameters()) + (list(maps.parameters()) if objective == "hs" else [])
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98))
    t_layer = t_cfg.num_hidden_layers - 1

    def step(input_ids, mask, labels):
        with torch.no_grad():
            t_out = teacher(
                input_ids=input_ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
            )
        s_out = student(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
        )
        if objective == "od":
            loss = output_distribution_loss(s_out.logits, t_out.logits, 1.0, labels != -100)
        elif objective == "hs":
            loss = sum(
                F.mse_loss(maps[i](s_out.hidden_states[i + 1]).float(), t_out.hidden_states[j].float())
                for i, j in enumerate(mapping)
            )
        else:
            with torch.no_grad():
                t_qkv = _qkv(teacher.bert.encoder.layer[t_layer - 1], t_out.hidden_states[t_layer - 1])
            s_last = s_cfg.num_hidden_layers
            s_qkv = _qkv(student.bert.encoder.layer[s_last - 1], s_out.hidden_states[s_last - 1])
            loss = _naive_relation_loss(s_qkv, t_qkv, mask, args.relation_heads)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def objective_config(objective: str, relation_heads: int) -> ObjectiveConfig:
    """HS = Uniform mapping, OD on the masked positions, MiniLMv2 from teacher layer L_T-1."""
    if objective == "hs":
        return ObjectiveConfig(weights={"hs": 1.0}, mapping="uniform")
    if objective == "od":
        return ObjectiveConfig(weights={"od": 1.0})
    return ObjectiveConfig(weights={"minilmv2": 1.0}, teacher_layer="L_T-1", relation_heads=relation_heads)


def ours_step_fn(
    objective: str, teacher: BertForMaskedLM, student: BertForMaskedLM, args, fused: bool | None = None
) -> Callable:
    """The bare Distiller step; ``fused`` picks torch's AdamW implementation (None: its default)."""
    distiller = Distiller(objective_config(objective, args.relation_heads), student, teacher).to(args.device)
    opt = torch.optim.AdamW(distiller.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=fused)

    def step(input_ids, mask, labels):
        loss = distiller(input_ids, mask, labels if distiller.needs_masking else None)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


# ------------------------------------------------------------------------------------------------ timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _clock(device: str) -> float:
    """Wall-clock seconds on GPU; this process's CPU-seconds on CPU (robust to other jobs' load)."""
    return time.perf_counter() if device == "cuda" else time.process_time()


def measure(step: Callable, args: argparse.Namespace, dtype: torch.dtype) -> tuple[float, float | None]:
    """Median seconds per step after warm-up, and peak GPU memory (GiB; None on CPU)."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=gen).to(args.device)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long, device=args.device)
    mask[: args.batch // 4, args.seq * 3 // 4 :] = 0  # some padding, as in real batches
    chosen = (torch.rand(args.batch, args.seq, generator=gen) < MASK_RATE).to(args.device) & (mask != 0)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    autocast = (
        torch.autocast(args.device, dtype=torch.bfloat16)
        if dtype == torch.bfloat16
        else contextlib.nullcontext()
    )
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with autocast:
        for i in range(args.warmup + args.iters):
            _sync(args.device)
            start = _clock(args.device)
            step(input_ids, mask, labels)
            _sync(args.device)
            if i >= args.warmup:
                times.append(_clock(args.device) - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_device(args.device, "--device")  # the GPU defaults on a CPU: refused before any work
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    ]
    torch.manual_seed(0)
    t_cfg = teacher_config(args)
    base_teacher = BertForMaskedLM(t_cfg).eval()
    peak, peak_src = peak_flops(args, dtype)
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"device: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"batch {args.batch} x {args.seq}, {str(dtype).removeprefix('torch.')}; teacher BERT "
        f"{args.teacher_layers}L-{args.teacher_hidden} (random weights); peak {peak / 1e12:.3g} TFLOP/s ({peak_src})"
    )
    print()
    if args.device == "cpu":
        print("timing: process CPU-seconds (tokens/s = tokens per CPU-second), robust to other load")
    print("| objective | student | method | tokens/s | step ms | peak mem GiB | MFU | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    tokens = args.batch * args.seq
    for objective in args.objectives.split(","):
        for preset in args.students.split(","):
            results = {}
            for method, build in (("naive", naive_step_fn), ("ours", ours_step_fn)):
                torch.manual_seed(0)
                teacher = copy.deepcopy(base_teacher).to(
                    args.device, dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
                )
                teacher.requires_grad_(False)
                if method == "naive":
                    teacher.set_attn_implementation("eager")  # output_attentions needs eager
                student = build_student(PRESETS[preset], t_cfg).to(args.device).train()
                if method == "naive":
                    student.set_attn_implementation("eager")
                step = build(objective, teacher, student, args)
                seconds, mem = measure(step, args, dtype)
                flops = needed_flops(objective, t_cfg, student.config, args)
                results[method] = seconds
                speed = results["naive"] / seconds
                print(
                    f"| {objective} | {preset} | {method} | {tokens / seconds:,.0f} | {seconds * 1e3:.1f} | "
                    f"{'n/a' if mem is None else f'{mem:.1f}'} | {flops / seconds / peak:.1%} | {speed:.2f}x |",
                    flush=True,
                )
                del step, teacher, student


if __name__ == "__main__":
    raise SystemExit(run_script(main, "distill_throughput.py"))  # a mistake: one line, exit 2
