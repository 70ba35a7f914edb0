"""Pure distillation losses (tensors in, scalar float32 tensor out) and the small modules holding their
learned maps.

Equations refer to "A Comparative Analysis of Task-Agnostic Distillation Methods for Compressing
Transformer Language Models" (arXiv 2310.08797). Conventions shared by every function here:

- ``attention_mask`` is ``[B, T]`` (bool or 0/1 ints; ``None`` = every token valid). Padding tokens never
  contribute, neither as positions nor (for relations) as keys.
- Every reduction happens in float32 whatever the input dtype (bf16 / fp16 inputs are upcast per use;
  float64 inputs stay float64, which the tests use).
- Teacher tensors are detached and never modified in place, so they may come from
  ``torch.inference_mode()``. Gradients flow to the student tensors and the learned maps only.
- The result is a 0-dim float32 tensor. When nothing is selected (no valid token), the result is an exact
  0 that is still connected to the student graph.

MiniLMv2 (eqs. 7-9) lives in :mod:`pretrain_distill.objectives.relations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from collections.abc import Mapping as MappingABC
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain_distill.objectives.mappings import mapping_pairs

States = Union[Sequence[Tensor], MappingABC[int, Tensor]]
"""Hidden states indexed by layer number: ``states[0]`` = embedding output, ``states[l]`` = layer ``l``.
Either the full ``L + 1`` tuple (HF ``output_hidden_states``) or a dict holding only the captured layers."""

Projections = Union[MappingABC[tuple[int, int], Callable[[Tensor], Tensor]], "HiddenStateProjections"]


# --------------------------------------------------------------------------------------------- helpers


def _valid_mask(attention_mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """``[B, T]`` bool mask of valid tokens (all True when ``attention_mask`` is None)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({batch}, {length})"
        )
    return attention_mask.to(device=device) != 0


def _valid_or_none(attention_mask: Tensor | None, x: Tensor) -> Tensor | None:
    """:func:`_valid_mask` for ``x`` ``[B, T, ...]``, or None when there is no mask (every token valid)."""
    return None if attention_mask is None else _valid_mask(attention_mask, x.shape[0], x.shape[1], x.device)


MASK_VALUE = -1e30  # a masked score: finite, so fully padded rows stay NaN-free (they get weight 0 anyway)


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype: float32 for half / bfloat16 / float32 inputs, float64 kept as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _zero_like_graph(t: Tensor) -> Tensor:
    """An exact zero (compute dtype) that keeps ``t`` in the autograd graph (for empty selections)."""
    return upcast(t).sum() * 0.0


def _masked_mean(values: Tensor, valid: Tensor | None, width: int = 1) -> Tensor:
    """``sum(values[valid]) / (count(valid) * width)`` for ``values`` ``[B, T]`` and ``valid`` ``[B, T]`` (None:
    every position), as a weighted sum: the shape never depends on the data, so nothing waits for the
    device. Invalid positions contribute exactly 0 (even where ``values`` is inf / NaN) and get no
    gradient; no valid position gives an exact 0 still attached to the graph."""
    if valid is None:
        return values.sum() / max(values.numel() * width, 1)
    total = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / (valid.sum() * width).clamp(min=1).to(values.dtype)


def _squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """``sum_d (pred - target)^2`` per position (``[..., d] -> [...]``), in the compute dtype."""
    pred = upcast(pred)
    return (pred - upcast(target).to(pred.dtype)).pow(2).sum(-1)


def _get_state(states: States, layer: int, who: str) -> Tensor:
    try:
        return states[layer]
    except (KeyError, IndexError):
        if isinstance(states, MappingABC):
            have = sorted(states.keys())
        else:
            have = f"0..{len(states) - 1}"
        raise KeyError(
            f"{who} hidden state for layer {layer} is missing (have layers {have}; index 0 = embeddings)"
        ) from None


def _check_same_tokens(a: Tensor, b: Tensor, what: str) -> None:
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"{what}: expected [B, T, d] tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"{what}: student and teacher disagree on [B, T]: {tuple(a.shape[:2])} vs {tuple(b.shape[:2])}"
        )


# -------------------------------------------------------------------------------------- HS (eq. 6)


def projection_key(student_layer: int, teacher_layer: int) -> str:
    """The string key of pair ``(i, j)`` inside :class:`HiddenStateProjections` (``"i_j"``)."""
    return f"{int(student_layer)}_{int(teacher_layer)}"


class HiddenStateProjections(nn.Module):
    """The learned maps ``W_i^j`` of eq. 6, one ``nn.Linear(d_S, d_T)`` per (student i, teacher j) pair.

    Index it with the pair: ``projections[(i, j)]`` (what :func:`hidden_state_loss` does); internally the
    linears live in an ``nn.ModuleDict`` under the string keys ``f"{i}_{j}"`` (:func:`projection_key`),
    so ``state_dict`` keys read ``maps.3_6.weight``.

    ``mapping`` is a layer mapping (one tuple of teacher layers per student layer). For the random strategy
    pass :func:`~pretrain_distill.objectives.mappings.reachable_mapping` so that every pair a redraw can
    produce already has its own map (created up front so the optimizer sees all parameters from step 0;
    a pair's map is trained only in the epochs it is drawn).

    ``bias=False`` (default) is eq. 6's plain linear map ``H^S W``; ``bias=True`` makes each map affine.
    """

    def __init__(
        self,
        mapping: Sequence[Sequence[int]],
        student_dim: int,
        teacher_dim: int,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.student_dim = int(student_dim)
        self.teacher_dim = int(teacher_dim)
        self.pairs: list[tuple[int, int]] = sorted(set(mapping_pairs(mapping)))
        self.maps = nn.ModuleDict(
            {
                projection_key(i, j): nn.Linear(self.student_dim, self.teacher_dim, bias=bias)
                for i, j in self.pairs
            }
        )

    def __getitem__(self, pair: tuple[int, int]) -> nn.Module:
        i, j = pair
        key = projection_key(i, j)
        if key not in self.maps:
            raise KeyError(f"no projection for (student layer {i}, teacher layer {j}); have {self.pairs}")
        return self.maps[key]

    def __contains__(self, pair: object) -> bool:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            return False
        return projection_key(*pair) in self.maps

    def __iter__(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def forward(self, pair: tuple[int, int], student_state: Tensor) -> Tensor:
        """Apply ``W_i^j`` to a student hidden state ``[..., d_S] -> [..., d_T]``."""
        return self[pair](student_state)


def _pair_projection(projections: Projections | None, i: int, j: int, d_s: int, d_t: int):
    """The map ``W_i^j`` of a mapped pair, or None (identity) when there are no projections."""
    if projections is None:
        if d_s != d_t:
            raise ValueError(
                f"hidden_state_loss: widths differ (student {d_s}, teacher {d_t}) and no projections were given"
            )
        return None
    try:
        # nn.ModuleDict keys must be strings: there the pair is looked up as f"{i}_{j}"
        return projections[projection_key(i, j) if isinstance(projections, nn.ModuleDict) else (i, j)]
    except KeyError:
        raise KeyError(f"hidden_state_loss: no projection for pair (student {i}, teacher {j})") from None


def hidden_state_loss(
    student_states: States,
    teacher_states: States,
    mapping: Sequence[Sequence[int]],
    projections: Projections | None,
    attention_mask: Tensor | None,
) -> Tensor:
    """HS transfer, eq. 6: ``L_HS = sum_i sum_{j in phi(i)} MSE(H^S_i W_i^j, H^T_j)``.

    Args:
        student_states / teacher_states: hidden states indexed by layer number (index 0 = embeddings):
            the full ``L + 1`` tuple or a dict ``{layer: [B, T, d]}`` of the captured layers.
        mapping: ``mapping[i - 1]`` = teacher layers for student layer ``i`` (see ``layer_mapping``).
        projections: ``projections[(i, j)]`` is a callable ``[N, d_S] -> [N, d_T]`` (a
            :class:`HiddenStateProjections`, or any mapping keyed by ``(i, j)`` tuples); a plain
            ``nn.ModuleDict`` is looked up with the string key ``projection_key(i, j) = f"{i}_{j}"``.
            ``None`` = identity, allowed only when the widths are equal.
        attention_mask: ``[B, T]``, padding excluded.

    Each MSE averages the squared error over the valid tokens and the teacher width ``d_T``; the terms are
    summed over all mapped pairs. An empty mapping gives 0.
    """
    pairs = mapping_pairs(mapping)
    total: Tensor | None = None
    valid: Tensor | None = None  # every state has the same [B, T]: the mask is built once
    for i, j in pairs:
        hs = _get_state(student_states, i, "student")
        ht = _get_state(teacher_states, j, "teacher").detach()
        _check_same_tokens(hs, ht, f"hidden_state_loss pair (student {i}, teacher {j})")
        if valid is None:
            valid = _valid_or_none(attention_mask, hs)
        proj = _pair_projection(projections, i, j, hs.shape[-1], ht.shape[-1])
        pred = hs if proj is None else proj(hs)
        if pred.shape != ht.shape:
            raise ValueError(
                f"hidden_state_loss pair ({i}, {j}): projected student {tuple(pred.shape)} does not match "
                f"teacher {tuple(ht.shape)}"
            )
        term = _masked_mean(_squared_error(pred, ht.to(pred.device)), valid, pred.shape[-1])
        total = term if total is None else total + term
    if total is None:  # nothing mapped: an exact 0, attached to the student graph when possible
        refs = (
            list(student_states.values()) if isinstance(student_states, MappingABC) else list(student_states)
        )
        return _zero_like_graph(refs[0]) if refs else torch.zeros(())
    return total


# -------------------------------------------------------------------------------------- OD (eq. 5)


def output_distribution_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    *,
    chunk_rows: int | None = None,
) -> Tensor:
    """OD transfer, eq. 5, as ``T^2 * KL(softmax(z_T / T) || softmax(z_S / T))`` averaged over positions.

    The paper's ``CE(p_T, p_S)`` equals ``KL(p_T || p_S) + H(p_T)``; ``H(p_T)`` does not depend on the
    student, so the gradient is the same and the loss is 0 when the student matches the teacher.

    Args:
        student_logits / teacher_logits: ``[..., V]`` logits; all leading dims are positions.
        temperature: ``T > 0``.
        mask: optional bool ``[...]`` over the leading dims selecting the positions to average over
            (e.g. the MLM-masked positions, or all valid tokens). ``None`` = all given positions (the caller
            has already gathered the positions it wants, as DistilBERT does).

    Computed in float32 (log-softmax of both sides); equals DistilBERT's
    ``KLDivLoss(reduction="batchmean")(log_softmax(z_S/T), softmax(z_T/T)) * T^2`` over the selected rows.
    The rows are processed ``chunk_rows`` at a time (default: 64 MiB of float32 per buffer) with a
    closed-form backward, so a bf16 ``[B, T, V]`` never gets a whole float32 copy; any chunk size gives
    the same result up to rounding. First-order gradients only.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"output_distribution_loss: logits shapes differ: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    teacher_logits = teacher_logits.detach()
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"output_distribution_loss: mask shape {tuple(mask.shape)} does not match the logits' leading "
                f"dims {tuple(student_logits.shape[:-1])}"
            )
        m = mask.to(student_logits.device) != 0
        zs = student_logits[m]
        zt = teacher_logits[m.to(teacher_logits.device)].to(zs.device)
    else:
        zs = student_logits.reshape(-1, student_logits.shape[-1])
        zt = teacher_logits.reshape(-1, teacher_logits.shape[-1]).to(zs.device)
    if zs.shape[0] == 0:
        return _zero_like_graph(zs)
    chunk = chunk_rows or max(1, OD_CHUNK_ELEMENTS // zs.shape[-1])
    return _ChunkedOutputKL.apply(zs, zt, float(temperature), int(chunk))


OD_CHUNK_ELEMENTS = 1 << 24
"""Rows of logits upcast at once by :func:`output_distribution_loss`: 64 MiB of float32 per buffer."""


class _ChunkedOutputKL(torch.autograd.Function):
    """``T^2 * mean_rows KL(softmax(z_T/T) || softmax(z_S/T))`` over ``[N, V]`` logits, a chunk of rows at
    a time in the compute dtype (float32, float64 kept): no ``[N, V]`` float32 copy is made or saved.
    The backward recomputes each chunk: ``dL/dz_S = T (softmax(z_S/T) - softmax(z_T/T)) / N``."""

    @staticmethod
    def forward(ctx, zs: Tensor, zt: Tensor, temperature: float, chunk: int) -> Tensor:  # type: ignore[override]
        dtype = upcast(zs[:0]).dtype
        total = torch.zeros((), dtype=dtype, device=zs.device)
        for i in range(0, zs.shape[0], chunk):
            log_ps = F.log_softmax(zs[i : i + chunk].to(dtype) / temperature, dim=-1)
            log_pt = F.log_softmax(zt[i : i + chunk].to(dtype) / temperature, dim=-1)
            total += F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
        ctx.save_for_backward(zs)
        ctx.zt, ctx.temperature, ctx.chunk = zt, temperature, chunk  # zt may be an inference tensor
        return total * (temperature**2 / zs.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (zs,) = ctx.saved_tensors
        zt, temperature, chunk = ctx.zt, ctx.temperature, ctx.chunk
        scale = grad_out * (temperature / zs.shape[0])
        grad = torch.empty_like(zs)
        for i in range(0, zs.shape[0], chunk):
            p_s = F.softmax(zs[i : i + chunk].to(scale.dtype) / temperature, dim=-1)
            p_t = F.softmax(zt[i : i + chunk].to(scale.dtype) / temperature, dim=-1)
            grad[i : i + chunk] = ((p_s - p_t) * scale).to(zs.dtype)
        return grad, None, None, None


# ------------------------------------------------------------------------------ DistilBERT baseline


def cosine_hidden_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor | None
) -> Tensor:
    """DistilBERT's cosine loss: mean over valid tokens of ``1 - cos(h_S, h_T)``.

    Matches ``nn.CosineEmbeddingLoss(reduction="mean")`` with target ``+1`` on the valid tokens'
    last hidden states (Sanh et al. 2019). Widths must be equal (DistilBERT students share the width).
    """
    _check_same_tokens(student_hidden, teacher_hidden, "cosine_hidden_loss")
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"cosine_hidden_loss needs equal widths, got student {student_hidden.shape[-1]} and teacher "
            f"{teacher_hidden.shape[-1]}"
        )
    valid = _valid_or_none(attention_mask, student_hidden)
    hs = upcast(student_hidden)
    ht = teacher_hidden.detach().to(device=hs.device, dtype=hs.dtype)
    # torch's cosine_embedding_loss uses EPSILON = 1e-12 in its normaliser; cosine_similarity uses 1e-8;
    # the difference only matters for (near-)zero vectors.
    cos = F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
    return _masked_mean(1.0 - cos, valid)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain masked-LM cross-entropy, mean over positions whose label is not ``-100`` (float32).

    The logits are upcast whole: pass the rows that matter (the Distiller gathers the labelled ones
    before the head, so ``[B, T, V]`` bf16 logits are never made). A sum over the labelled rows divided
    by their count, so nothing waits for the device; an exact 0 (connected to the graph) when no position
    is labelled.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"mlm_loss: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    labels = labels.to(logits.device)
    rows = upcast(logits).reshape(-1, logits.shape[-1])
    total = F.cross_entropy(rows, labels.reshape(-1), ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1).to(total.dtype)


# --------------------------------------------------------------------------- DirectMiniLM (eq. 10/11)


Widths = int | Sequence[int]


def _per_alpha(widths: Widths) -> tuple[int, int, int]:
    """``(d_Q, d_K, d_V)`` from one width or three (K / V narrower with grouped-query attention)."""
    values = (widths,) * 3 if isinstance(widths, int) else tuple(int(w) for w in widths)
    if len(values) != 3:
        raise ValueError(f"DirectMiniLMMaps: widths are one int or (Q, K, V), got {widths!r}")
    return values  # type: ignore[return-value]


class DirectMiniLMMaps(nn.Module):
    """The learned maps ``W_{alpha,a}`` (``d_r^S x d_r^T``) of eq. 10, for alpha in Q, K, V and ``a`` in
    ``1..A_r`` (DirectMiniLM uses ``A_r = A_h``).

    ``weights[alpha]`` has shape ``[A_r, d_r^S, d_r^T]`` for that alpha's widths (one width for all three,
    or ``(Q, K, V)`` widths per side: grouped-query attention makes K and V narrower than Q) and is applied
    with one batched einsum. Initialised like ``nn.Linear`` (uniform in ``+-1/sqrt(d_r^S)``); no bias (eq. 10
    has none).
    """

    def __init__(self, num_heads: int, student_dim: Widths, teacher_dim: Widths) -> None:
        super().__init__()
        self.student_dims, self.teacher_dims = _per_alpha(student_dim), _per_alpha(teacher_dim)
        for label, dims in (("student", self.student_dims), ("teacher", self.teacher_dims)):
            for d in dims:
                if num_heads < 1 or d % num_heads:
                    raise ValueError(
                        f"DirectMiniLMMaps: num_heads={num_heads} must divide the {label} width {d}"
                    )
        self.num_heads = int(num_heads)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_heads, ds // num_heads, dt // num_heads))
            for ds, dt in zip(self.student_dims, self.teacher_dims)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.weights:
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, alpha: int, student: Tensor) -> Tensor:
        """Map the student's ``[..., d_S]`` Q (alpha=0), K (1) or V (2) head-wise to ``[..., d_T]``:
        split into ``A_r`` heads of ``d_r^S``, multiply head ``a`` by ``W_{alpha,a}``, concatenate."""
        if student.shape[-1] != self.student_dims[alpha]:
            raise ValueError(
                f"DirectMiniLMMaps: expected width {self.student_dims[alpha]}, got {student.shape[-1]}"
            )
        heads = student.reshape(*student.shape[:-1], self.num_heads, -1)
        # float32 compute: d_r is small, so this is cheap, and bf16 inputs keep their precision here.
        heads = upcast(heads)
        out = torch.einsum("...ad,ade->...ae", heads, self.weights[alpha].to(heads.dtype))
        return out.reshape(*student.shape[:-1], self.teacher_dims[alpha])

    def orthogonality_penalty(self) -> Tensor:
        """Soft version of eq. 11's constraint ``W W^T = I``: mean over (alpha, a) of ``||W W^T - I||_F^2``.

        Uses ``W W^T`` (``d_r^S x d_r^S``) when ``d_r^S <= d_r^T`` and ``W^T W`` otherwise (the side that can
        reach the identity). Off unless the caller adds it (the paper found the constraint hurts).
        """
        penalties = []
        for weight in self.weights:
            w = upcast(weight)
            gram = w @ w.transpose(-1, -2) if w.shape[1] <= w.shape[2] else w.transpose(-1, -2) @ w
            eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
            penalties.append(((gram - eye) ** 2).sum(dim=(-1, -2)))
        return torch.cat(penalties).mean()


def _check_qkv(student_qkv: Sequence[Tensor], teacher_qkv: Sequence[Tensor], what: str) -> None:
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError(f"{what}: expected (Q, K, V) triples, got {len(student_qkv)} and {len(teacher_qkv)}")
    for name, s, t in zip("QKV", student_qkv, teacher_qkv):
        _check_same_tokens(s, t, f"{what} ({name})")


def direct_minilm_loss(
    student_qkv: Sequence[Tensor],
    teacher_qkv: Sequence[Tensor],
    attention_mask: Tensor | None,
    maps: DirectMiniLMMaps,
) -> Tensor:
    """DirectMiniLM, eq. 10: ``sum_{alpha in Q,K,V} MSE(A^S_alpha W_alpha, A^T_alpha)``, head-wise maps.

    ``*_qkv`` are ``(Q, K, V)`` tuples of ``[B, T, d]`` (concatenated heads). Each MSE averages over the valid
    tokens and the teacher width ``d_T = A_r * d_r^T`` -- i.e. the mean (not the sum) over the ``A_r``
    relation heads, the same normalisation as eq. 6 and :func:`minilmv2_loss`; the three alpha terms are
    summed. Add ``w * maps.orthogonality_penalty()`` yourself for the eq. 11 constraint.
    """
    _check_qkv(student_qkv, teacher_qkv, "direct_minilm_loss")
    valid = _valid_or_none(attention_mask, student_qkv[0])  # Q, K and V share [B, T]
    total: Tensor | None = None
    for alpha, (s, t) in enumerate(zip(student_qkv, teacher_qkv)):
        if s.shape[-1] != maps.student_dims[alpha] or t.shape[-1] != maps.teacher_dims[alpha]:
            raise ValueError(
                f"direct_minilm_loss: maps are for {'QKV'[alpha]} widths "
                f"{maps.student_dims[alpha]}->{maps.teacher_dims[alpha]}, got "
                f"student {s.shape[-1]} and teacher {t.shape[-1]}"
            )
        pred = maps(alpha, s)
        term = _masked_mean(_squared_error(pred, t.detach().to(pred.device)), valid, pred.shape[-1])
        total = term if total is None else total + term
    assert total is not None
    return total
