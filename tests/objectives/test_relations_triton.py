"""The Triton relation kernels (relations_triton.py) against the float64 loop reference: compiled on CUDA
when there is a GPU, else run by Triton's interpreter on CPU (``TRITON_INTERPRET=1``, in a subprocess
because the variable must be set before Triton is imported), so CI checks the kernels without a GPU. Shapes cover several query/key blocks, a length
that is not a block multiple, relation-head widths that are not powers of two, padding (including a
fully padded row) and bf16 inputs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain_distill.objectives import minilmv2_loss
from tests.objectives.test_relations import make, relation_reference

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # name: (B, T, d_S, d_T, A_r, dtype, mask_kind)
    "blocks": (2, 70, 24, 36, 3, "float32", "right"),  # 2 blocks of 64, d_r 8 / 12
    "one-short-block": (3, 9, 12, 20, 2, "float32", "right"),  # T < 16, d_r 6 / 10
    "full-padded-row": (3, 40, 16, 32, 2, "float32", "holes"),
    "bf16": (2, 33, 16, 24, 4, "bfloat16", "right"),
}

CHILD = """
import sys, torch
from pretrain_distill.objectives.relations import minilmv2_loss
inputs = torch.load(sys.argv[1])
loss = minilmv2_loss(inputs["student"], inputs["teacher"], inputs["mask"], inputs["A_r"], backend="fused")
grads = torch.autograd.grad(loss, inputs["student"])
torch.save({"loss": loss.detach(), "grads": [g.detach() for g in grads]}, sys.argv[2])
"""


def run_fused(tmp_path: Path, student, teacher, mask, A_r: int) -> dict:
    """``minilmv2_loss(backend="fused")`` and its gradients: compiled kernels on CUDA, else the interpreter."""
    if torch.cuda.is_available():
        s = [x.detach().cuda().requires_grad_() for x in student]
        loss = minilmv2_loss(s, [t.cuda() for t in teacher], mask.cuda(), A_r, backend="fused")
        return {"loss": loss.detach().cpu(), "grads": [g.cpu() for g in torch.autograd.grad(loss, s)]}
    torch.save({"student": student, "teacher": teacher, "mask": mask, "A_r": A_r}, tmp_path / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        check=True,
        env=env,
        cwd=ROOT,
    )
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_kernels_match_reference(case: str, tmp_path: Path) -> None:
    B, T, dS, dT, A_r, dtype, mask_kind = CASES[case]
    student, teacher, mask = make(B=B, T=T, dS=dS, dT=dT, seed=3, mask_kind=mask_kind)
    if case == "full-padded-row":
        mask[1] = 0
    student = [s.detach().to(getattr(torch, dtype)).requires_grad_() for s in student]
    teacher = [t.to(getattr(torch, dtype)) for t in teacher]
    got = run_fused(tmp_path, student, teacher, mask, A_r)

    s64 = [s.detach().double().requires_grad_() for s in student]
    ref = relation_reference(s64, teacher, mask, A_r)
    ref_grads = torch.autograd.grad(ref, s64)
    assert got["loss"].dtype == torch.float32
    assert got["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(got["grads"], ref_grads):
        assert g.dtype == student[0].dtype and torch.isfinite(g.float()).all()
        torch.testing.assert_close(g.double(), r, rtol=1e-2 if dtype == "bfloat16" else 1e-4, atol=1e-6)
    if case == "full-padded-row":
        assert all((g[1] == 0).all() for g in got["grads"])


def test_fused_perfect_student_has_zero_loss_and_gradient(tmp_path: Path) -> None:
    """Student relations equal to the teacher's (same Q/K/V): KL = 0, gradient = 0."""
    student, _, mask = make(B=2, T=20, dS=16, dT=16, seed=4)
    teacher = [s.detach().clone() for s in student]
    got = run_fused(tmp_path, student, teacher, mask, 2)
    assert abs(got["loss"].item()) < 1e-6
    assert all(g.abs().max() < 1e-6 for g in got["grads"])
