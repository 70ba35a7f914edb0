"""Peak memory and time of the MiniLMv2 relation loss (forward + backward): naive vs chunked.

Variants:
  naive       materialise all ``B * A_r * T^2`` fp32 relations per alpha and let autograd keep them
              (``minilmv2_loss_autograd``);
  checkpoint  the same per-chunk autograd code wrapped in ``torch.utils.checkpoint`` (what the brief
              suggested; kept here to justify the choice);
  chunked     ``minilmv2_loss(backend="chunked")``: custom autograd.Function, chunked forward, closed-form
              chunked backward, nothing T x T saved (the CPU path);
  triton      ``minilmv2_loss(backend="fused")``: Triton kernels, flash-attention style, no T x T tile ever
              leaves the chip (the CUDA path; no chunk size).

Peak memory is the extra memory above the inputs during one forward + backward:
  cuda: ``torch.cuda.max_memory_allocated`` delta;
  cpu:  each (variant, chunk) runs in a fresh subprocess (with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed
        tensors go back to the OS); ``ru_maxrss`` high-water mark delta after a tiny warm-up (MiB), so
        allocator noise of a few MiB is expected. CPU times on a shared 2-core box are only indicative.

Usage:
  python benchmarks/relation_loss_memory.py                       # CPU, small shapes
  python benchmarks/relation_loss_memory.py --device cuda         # B 128 x T 256, A_r 48, d 384/768, bf16,
                                                                  # plus the triton variant
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from pretrain_distill.core.command_line import run_script
from pretrain_distill.core.distributed import require_device
from pretrain_distill.objectives.relations import (
    DEFAULT_CHUNK_ELEMENTS,
    _check_inputs,
    _row_weights,
    minilmv2_loss,
)

# The naive baseline is the tests' independent reference implementation.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "objectives"))
from relation_reference import minilmv2_loss_autograd  # noqa: E402

MiB = 1024**2


def _chunk_kl(s: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor, A_r: int):
    """Autograd version for one batch slice, all relation heads (used by the checkpoint variant)."""
    B, T, _ = s.shape
    xs = s.reshape(B, T, A_r, -1).transpose(1, 2).float()
    xt = t.reshape(B, T, A_r, -1).transpose(1, 2).float()
    mask = ~valid[:, None, None, :]
    log_s = torch.log_softmax(
        (xs @ xs.transpose(-1, -2) / math.sqrt(xs.shape[-1])).masked_fill(mask, -1e30), -1
    )
    log_t = torch.log_softmax(
        (xt @ xt.transpose(-1, -2) / math.sqrt(xt.shape[-1])).masked_fill(mask, -1e30), -1
    )
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(mask, 0.0).sum(-1)
    return (kl * weight[:, None, :]).sum()


def checkpoint_loss(student_qkv, teacher_qkv, attention_mask, A_r: int, chunk_size: int) -> torch.Tensor:
    B, T = _check_inputs(student_qkv, teacher_qkv, A_r)
    valid, weight = _row_weights(attention_mask, B, T, A_r, student_qkv[0].device, torch.float32)
    step = max(1, chunk_size // A_r)
    total = torch.zeros((), device=student_qkv[0].device)
    for s, t in zip(student_qkv, teacher_qkv):
        for b0 in range(0, B, step):
            sl = slice(b0, b0 + step)
            total = total + checkpoint(
                _chunk_kl, s[sl], t[sl].detach(), valid[sl], weight[sl], A_r, use_reentrant=False
            )
    return total


def make_inputs(args, device: torch.device):
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    B, T = args.batch, args.seq
    student = [
        torch.randn(B, T, args.d_student, generator=g).to(device=device, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]
    teacher = [
        torch.randn(B, T, args.d_teacher, generator=g).to(device=device, dtype=dtype) for _ in range(3)
    ]
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    mask[:, T - T // 8 :] = 0  # some padding
    return student, teacher, mask


def _backend(variant: str, chunk: int) -> dict:
    return {"backend": "fused"} if variant == "triton" else {"backend": "chunked", "chunk_size": chunk}


def run_variant(variant: str, chunk: int, args, device: torch.device) -> tuple[float, float]:
    """Returns (peak extra MiB, median seconds) of forward + backward."""
    student, teacher, mask = make_inputs(args, device)

    def step() -> None:
        for s in student:
            s.grad = None
        if variant == "naive":
            loss = minilmv2_loss_autograd(student, teacher, mask, args.relation_heads)
        elif variant == "checkpoint":
            loss = checkpoint_loss(student, teacher, mask, args.relation_heads, chunk)
        else:
            loss = minilmv2_loss(student, teacher, mask, args.relation_heads, **_backend(variant, chunk))
        loss.backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        step()  # warm-up (kernels, allocator)
        sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / MiB
    else:
        # warm up lazily initialised machinery (autograd threads, kernels) on a tiny problem first, so the
        # high-water mark delta below measures this problem's tensors
        tiny = argparse.Namespace(**{**vars(args), "batch": 1, "seq": 8})
        ts, tt, tm = make_inputs(tiny, device)
        if variant == "naive":
            minilmv2_loss_autograd(ts, tt, tm, args.relation_heads).backward()
        elif variant == "checkpoint":
            checkpoint_loss(ts, tt, tm, args.relation_heads, chunk).backward()
        else:
            minilmv2_loss(ts, tt, tm, args.relation_heads, **_backend(variant, chunk)).backward()
        del ts, tt, tm
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / MiB
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return peak, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--relation-heads", type=int, default=None)
    p.add_argument("--d-student", type=int, default=384)
    p.add_argument("--d-teacher", type=int, default=768)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: fp32 on cpu, bf16 on cuda)")
    p.add_argument("--chunk-sizes", default=None, help="comma list of (batch x head) slices per chunk")
    p.add_argument("--variants", default=None, help="default: naive,checkpoint,chunked (+ triton on cuda)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    require_device(args.device, "--device")
    cuda = args.device == "cuda"
    args.batch = args.batch or (128 if cuda else 8)
    args.seq = args.seq or 256
    args.relation_heads = args.relation_heads or (48 if cuda else 12)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.variants = args.variants or ("naive,checkpoint,chunked" + (",triton" if cuda else ""))
    device = torch.device(args.device)

    if args.child:  # CPU: one measurement per fresh process
        variant, chunk = args.child.split(":")
        print(json.dumps(run_variant(variant, int(chunk), args, device)))
        return

    B, T, A = args.batch, args.seq, args.relation_heads
    default_chunk = max(1, DEFAULT_CHUNK_ELEMENTS // (T * T))
    chunks = (
        [int(c) for c in args.chunk_sizes.split(",")]
        if args.chunk_sizes
        else sorted({A, 4 * A, default_chunk})
    )
    rel_mib = B * A * T * T * 4 / MiB
    print(
        f"MiniLMv2 relation loss fwd+bwd on {args.device}: B={B} T={T} A_r={A} d={args.d_student}/"
        f"{args.d_teacher} {args.dtype}; one fp32 relation tensor B*A_r*T^2 = {rel_mib:.0f} MiB "
        f"(x3 alphas = {3 * rel_mib:.0f} MiB); default chunk = {default_chunk} slices"
    )
    rows = []
    for variant in args.variants.split(","):
        for chunk in [B * A] if variant in ("naive", "triton") else chunks:
            if cuda:
                try:
                    peak, sec = run_variant(variant, chunk, args, device)
                except torch.cuda.OutOfMemoryError:
                    peak, sec = float("nan"), float("nan")
                    torch.cuda.empty_cache()
            else:
                cmd = [sys.executable, __file__, "--child", f"{variant}:{chunk}"] + [
                    a for a in sys.argv[1:] if not a.startswith("--child")
                ]
                cmd += ["--batch", str(B), "--seq", str(T), "--relation-heads", str(A), "--dtype", args.dtype]
                # A fixed mmap threshold makes glibc return every freed block above 64 KiB to the OS, so
                # RSS follows live tensor memory (the dynamic threshold would keep freed chunks on the heap).
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                peak, sec = json.loads(out.strip().splitlines()[-1])
            rows.append((variant, chunk, peak, sec))
    naive = next((r for r in rows if r[0] == "naive"), None)
    print(
        f"{'variant':<11} {'chunk':>6} {'peak MiB':>10} {'time ms':>9} {'mem / naive':>12} {'time / naive':>13}"
    )
    for variant, chunk, peak, sec in rows:
        mem_ratio = f"{peak / naive[2]:.3f}" if naive and naive[2] > 0 else "-"
        time_ratio = f"{sec / naive[3]:.2f}" if naive and naive[3] > 0 else "-"
        print(f"{variant:<11} {chunk:>6} {peak:>10.1f} {sec * 1e3:>9.1f} {mem_ratio:>12} {time_ratio:>13}")


if __name__ == "__main__":
    raise SystemExit(run_script(main, "relation_loss_memory.py"))  # a mistake: one line, exit 2
