"""The ``Distiller``: student + learned maps + taps on a frozen teacher -> named losses and their total.

From an :class:`~pretrain_distill.run_config.ObjectiveConfig` it works out what every loss term reads
(hidden states of mapped layers, Q/K/V of one layer, MLM logits), puts :class:`~pretrain_distill.models.Tap`
hooks on exactly those, truncates the teacher to the deepest layer read, and on each batch runs

- the teacher under ``torch.inference_mode()`` (its MLM head only for OD; not at all for MLM alone),
- the student's base encoder; OD / MLM add the MLM head, on only the positions they read (the masked
  tokens, or the valid ones for ``od_positions: all``): the head is position-wise, and at a 30k
  vocabulary it costs more than a small student's encoder when run on every position,

then the pure losses of :mod:`pretrain_distill.objectives`. Terms (weights in ``objective.weights``):
``hs`` (eq. 6), ``od`` (eq. 5), ``minilmv2`` (eqs. 7-9), ``direct_minilm`` (eq. 10), ``cosine`` and
``mlm`` (DistilBERT baseline). The teacher is held in a plain attribute, never registered as a submodule,
so ``parameters()``, ``state_dict()``, ``.to()`` and DeepSpeed see only the student and the maps.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from pretrain_distill.core.seeds import torch_generator
from pretrain_distill.models import (
    Captured,
    MissingMLMHeadError,
    Tap,
    base_model,
    freeze,
    has_mlm_head,
    spec_of,
    truncate_layers,
)
from pretrain_distill.models.attention_mask import encoder_attention_mask
from pretrain_distill.models.families import (
    encoder_layers,
    family_of,
    mlm_head,
    qkv_widths,
    sliding_window_layers,
)
from pretrain_distill.models.teacher import FIT_MLM_HEAD_HINT
from pretrain_distill.objectives.host_batch import HostBatch, plan_batch
from pretrain_distill.objectives.losses import (
    DirectMiniLMMaps,
    HiddenStateProjections,
    cosine_hidden_loss,
    direct_minilm_loss,
    hidden_state_loss,
    mlm_loss,
    output_distribution_loss,
)
from pretrain_distill.objectives.mappings import LayerMapping, layer_mapping, reachable_mapping
from pretrain_distill.objectives.relations import minilmv2_loss
from pretrain_distill.run_config import ObjectiveConfig
from pretrain_distill.vocab import StudentVocab, VocabIndex

TERMS: tuple[str, ...] = ("hs", "od", "minilmv2", "direct_minilm", "cosine", "mlm")
_LOGIT_TERMS = ("od", "mlm")


def mlm_logits_at(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, rows: Tensor) -> Tensor:
    """The MLM logits of the flat positions ``rows`` (indices into ``B * T``): ``[N, V]``, the head run
    on those rows only. ``attention_mask``: ``[B, T]``, None when no token is padding.

    The encoder sees the whole batch; the head (the family's MLM head chain, position-wise: ModernBERT's
    ``head -> decoder``, ELECTRA's ``generator_predictions -> generator_lm_head``, ...) only the selected
    rows, gathered by indices the host computed: no ``B x T x V`` logits are ever formed, and their
    number is known before the forward (nothing waits for the device).
    """
    head = mlm_head(model)
    mask = encoder_attention_mask(model, attention_mask)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no MLM head chain of its family: no MLM logits")
    hidden = base_model(model)(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return head(hidden.flatten(0, 1).index_select(0, rows))


def resolve_teacher_layer(spec: str | int, num_teacher_layers: int) -> int:
    """``"L_T"``, ``"L_T-1"``, ``"L_T-2"`` (any ``L_T-n``) or a 1-based layer number -> layer number."""
    text = str(spec).strip().replace(" ", "")
    match = re.fullmatch(r"(?i)L_T(?:-(\d+))?", text)
    if match:
        layer = num_teacher_layers - int(match.group(1) or 0)
    elif text.isdigit():
        layer = int(text)
    else:
        raise ValueError(f"objective.teacher_layer must be L_T, L_T-n or a layer number, got {spec!r}")
    if not 1 <= layer <= num_teacher_layers:
        raise ValueError(
            f"objective.teacher_layer {spec!r} is layer {layer}, outside the teacher's 1..{num_teacher_layers}"
        )
    return layer


def _redraw_counter(remap_every: int | str, epoch: int, step: int) -> int:
    if remap_every == "epoch":
        return epoch
    if remap_every == "step":
        return step
    return step // int(remap_every)


class Distiller(nn.Module):
    """Student + learned maps; ``forward`` returns each loss term and ``"loss"`` = their weighted sum.

    Args:
        objective_cfg: which terms, their weights and settings.
        student: a Hugging Face ``*ForMaskedLM`` (or base) encoder of a supported family; trained.
        teacher: a supported encoder; frozen (eval, ``requires_grad=False``) and truncated **in place** to
            the deepest layer the terms read. Needs a trained MLM head (``*ForMaskedLM``) for ``od``.
        vocab: a pruned student vocabulary (:mod:`pretrain_distill.vocab`), or None: the teacher's. With
            one, ``forward`` takes teacher ids; the student reads them remapped on the device, OD compares
            the teacher's distribution restricted to the kept tokens and renormalised, MLM labels are
            remapped.
    """

    def __init__(
        self,
        objective_cfg: ObjectiveConfig,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        vocab: StudentVocab | None = None,
    ):
        super().__init__()
        self.cfg = objective_cfg
        self.weights = self._check_weights(objective_cfg.weights)
        self.student = student
        self.vocab_index = VocabIndex(vocab) if vocab is not None else None
        object.__setattr__(self, "_teacher", freeze(teacher))  # not a submodule: hidden from DeepSpeed
        s_spec, t_spec = spec_of(student.config), spec_of(teacher.config)
        self.num_student_layers, self.num_teacher_layers = s_spec.layers, t_spec.layers
        self.epoch = self.step = 0
        self._needs_logits = any(t in self.weights for t in _LOGIT_TERMS)
        self._check_models(student, teacher)
        self._random = False
        self._mapping: LayerMapping | None = None
        self._counter = 0
        if "hs" in self.weights:
            self._setup_hs(s_spec.hidden, t_spec.hidden)
        self.qkv_layers: tuple[int, int] | None = None
        if "minilmv2" in self.weights or "direct_minilm" in self.weights:
            self._setup_qkv(s_spec.heads)
        self.teacher_depth = self._teacher_depth()
        if self.teacher_depth:
            if self.teacher_depth > len(encoder_layers(teacher)):
                raise ValueError(
                    f"the objective reads teacher layer {self.teacher_depth} but the teacher computes only "
                    f"{len(encoder_layers(teacher))} layers"
                )
            truncate_layers(teacher, self.teacher_depth)
        rotary = objective_cfg.qk_rotary
        self._student_tap = Tap(student, *self._tapped("student"), rotary=rotary)
        self._teacher_tap = (
            Tap(teacher, *self._tapped("teacher"), rotary=rotary) if self.teacher_depth else None
        )

    # ------------------------------------------------------------------------------------ set-up helpers

    @staticmethod
    def _check_weights(weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(
                f"unknown objective term(s) {unknown} in objective.weights; terms: {', '.join(TERMS)}"
            )
        negative = {k: w for k, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f"objective.weights must be >= 0, got {negative}")
        active = {k: float(w) for k, w in weights.items() if w > 0}
        if not active:
            raise ValueError(f"objective.weights gives no term a positive weight: {weights}")
        return active

    def _check_models(self, student: PreTrainedModel, teacher: PreTrainedModel) -> None:
        """Start-up checks of what the terms need from the two models (MLM heads, vocabularies, widths)."""
        if self._needs_logits and not has_mlm_head(student):
            raise ValueError(
                f"objective terms {self._logit_terms()} need a student with an MLM head (*ForMaskedLM)"
            )
        if "od" in self.weights:
            if not has_mlm_head(teacher):
                raise MissingMLMHeadError(
                    f"the 'od' term needs the teacher's MLM logits, but the teacher ({type(teacher).__name__}) "
                    f"has no MLM head (load it with build_teacher(..., needs_mlm_head=True)); {FIT_MLM_HEAD_HINT}"
                )
            expected = self.vocab_index.vocab.size if self.vocab_index else teacher.config.vocab_size
            if student.config.vocab_size != expected:
                raise ValueError(
                    f"'od' compares vocabularies: student {student.config.vocab_size}, "
                    f"teacher {teacher.config.vocab_size}"
                    + (f" pruned to {expected}" if self.vocab_index else "")
                )
            if self.cfg.temperature <= 0:
                raise ValueError(f"objective.temperature must be > 0, got {self.cfg.temperature}")
        s_hidden, t_hidden = spec_of(student.config).hidden, spec_of(teacher.config).hidden
        if "cosine" in self.weights and s_hidden != t_hidden:
            raise ValueError(
                f"the 'cosine' term needs equal widths (DistilBERT students), got student {s_hidden}, "
                f"teacher {t_hidden}"
            )

    def _setup_hs(self, student_dim: int, teacher_dim: int) -> None:
        """HS (eq. 6): the mapping (random: redrawn from (mapping_seed, counter)) and a map per reachable pair."""
        mapping, remap = self.cfg.mapping, self.cfg.remap_every
        self._random = isinstance(mapping, str) and mapping.strip().lower() == "random"
        if self._random and not (
            remap in ("epoch", "step")
            or (isinstance(remap, int) and not isinstance(remap, bool) and remap > 0)
        ):
            raise ValueError(
                f"objective.remap_every must be 'epoch', 'step' or a positive int, got {remap!r}"
            )
        reach = reachable_mapping(mapping, self.num_teacher_layers, self.num_student_layers)
        self.hs_projections = HiddenStateProjections(
            reach, student_dim, teacher_dim, bias=self.cfg.projection_bias
        )
        self._mapping = self._draw(0)

    def _setup_qkv(self, student_heads: int) -> None:
        """MiniLMv2 / DirectMiniLM: the (student, teacher) layer pair whose Q/K/V are read; DirectMiniLM maps."""
        t_layer = resolve_teacher_layer(self.cfg.teacher_layer, self.num_teacher_layers)
        s_layer = self.cfg.student_layer or self.num_student_layers
        if not 1 <= s_layer <= self.num_student_layers:
            raise ValueError(
                f"objective.student_layer {s_layer} is outside the student's 1..{self.num_student_layers}"
            )
        self.qkv_layers = (s_layer, t_layer)
        models = (("student", self.student, s_layer), ("teacher", self.teacher, t_layer))
        for who, model, layer in models:
            sliding = sliding_window_layers(model.config)
            if layer in sliding:
                full = [i for i in range(1, len(encoder_layers(model)) + 1) if i not in sliding]
                raise ValueError(
                    f"the relation terms read {who} layer {layer}, a sliding-window attention layer of "
                    f"{family_of(model.config).name}: its tokens never attend beyond the window, so MiniLMv2 "
                    f"and DirectMiniLM read a global layer; the {who}'s global layers are {full} "
                    f"(objective.{who}_layer)"
                )
        widths = {who: qkv_widths(model.config) for who, model, _ in models}
        if "minilmv2" in self.weights:
            self._check_relation_heads(self.cfg.relation_heads, widths, "objective.relation_heads")
        if "direct_minilm" in self.weights:
            heads = self.cfg.direct_relation_heads or student_heads
            self._check_relation_heads(heads, widths, "objective.direct_relation_heads")
            self.direct_maps = DirectMiniLMMaps(heads, widths["student"], widths["teacher"])

    @staticmethod
    def _check_relation_heads(heads: int, widths: dict[str, tuple[int, int, int]], key: str) -> None:
        """The relation heads divide each of Q, K, V's own width on both sides (K/V are narrower with GQA)."""
        for who, (q, k, v) in widths.items():
            for name, width in zip("QKV", (q, k, v)):
                if heads < 1 or width % heads:
                    raise ValueError(
                        f"{key}={heads} must divide the {who}'s {name} width {width} (relation heads split "
                        f"each of Q, K, V; widths Q/K/V = {q}/{k}/{v})"
                    )

    def _logit_terms(self) -> list[str]:
        return [t for t in _LOGIT_TERMS if t in self.weights]

    def _draw(self, counter: int) -> LayerMapping:
        generator = None
        if self._random:
            generator = torch_generator(self.cfg.mapping_seed, counter)
        return layer_mapping(
            self.cfg.mapping, self.num_teacher_layers, self.num_student_layers, generator=generator
        )

    def _teacher_depth(self) -> int:
        """Deepest teacher layer any term reads (0 = no teacher forward needed, e.g. MLM alone)."""
        depth = 0
        if "od" in self.weights or "cosine" in self.weights:
            depth = self.num_teacher_layers
        if self._mapping is not None:
            reach = reachable_mapping(self.cfg.mapping, self.num_teacher_layers, self.num_student_layers)
            depth = max([depth] + [j for layers in reach for j in layers])
        if self.qkv_layers is not None:
            depth = max(depth, self.qkv_layers[1])
        return depth

    def _tapped(self, side: str) -> tuple[list[int], list[int]]:
        """(hidden layers, Q/K/V layers) the terms read on ``side`` ("student" or "teacher")."""
        student = side == "student"
        hidden: set[int] = set()
        if self._mapping is not None:
            for i, layers in enumerate(self._mapping, start=1):
                if student and layers:
                    hidden.add(i)
                elif not student:
                    hidden.update(layers)
        if "cosine" in self.weights:
            hidden.add(self.num_student_layers if student else self.num_teacher_layers)
        qkv = [self.qkv_layers[0 if student else 1]] if self.qkv_layers else []
        return sorted(hidden), qkv

    # ------------------------------------------------------------------------------------ public API

    @property
    def teacher(self) -> PreTrainedModel:
        """The frozen (truncated) teacher; not a submodule."""
        return self._teacher

    @property
    def needs_masking(self) -> bool:
        """Whether batches need MLM masking and ``labels``: an ``mlm`` term or ``od`` on masked positions."""
        return "mlm" in self.weights or ("od" in self.weights and self.cfg.od_positions == "masked")

    @property
    def mapping(self) -> LayerMapping | None:
        """The current HS layer mapping (one tuple of teacher layers per student layer), None without HS."""
        return self._mapping

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch; redraws a per-epoch random mapping from ``(mapping_seed, epoch)``."""
        self.epoch = int(epoch)
        self._update_mapping()

    def set_step(self, step: int) -> None:
        """Record the optimizer step; redraws a per-step (or every-N-steps) random mapping."""
        self.step = int(step)
        self._update_mapping()

    def _update_mapping(self) -> None:
        if not self._random:
            return
        counter = _redraw_counter(self.cfg.remap_every, self.epoch, self.step)
        if counter != self._counter:
            self._counter = counter
            self._mapping = self._draw(counter)
            self._teacher_tap.retarget(*self._tapped("teacher"))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Each weighted term's loss (float32 scalars) and ``"loss"`` = ``sum(weight * term)``.

        ``input_ids`` on the models' device; ``attention_mask`` (None: no padding) and the MLM ``labels``
        best stay the loader's CPU tensors: padding and the positions to score are then decided on the
        host (:func:`plan_batch`) and the step never waits for the device.
        """
        if self.needs_masking and labels is None:
            raise ValueError(
                f"objective terms {self._logit_terms()} need MLM labels (a masked batch): pass labels="
            )
        host = plan_batch(
            attention_mask,
            labels,
            input_ids.device,
            shape=input_ids.shape,
            od_positions=self.cfg.od_positions if "od" in self.weights else None,
            mlm="mlm" in self.weights,
        )
        t_cap = teacher_logits = None
        if self._teacher_tap is not None:
            with torch.inference_mode():
                teacher_logits = self._encode(self.teacher, input_ids, host, logits="od" in self.weights)
            t_cap = self._teacher_tap.pop()
        student_ids, mlm_labels = input_ids, host.mlm_labels
        if self.vocab_index is not None:  # a pruned vocabulary: remapped ids and labels, the kept logits
            student_ids = self.vocab_index.student_ids(input_ids)
            if mlm_labels is not None:
                mlm_labels = self.vocab_index.student_labels(mlm_labels)
            if teacher_logits is not None:
                teacher_logits = self.vocab_index.restrict(teacher_logits)
        student_logits = self._encode(self.student, student_ids, host, logits=self._needs_logits)
        s_cap = self._student_tap.pop()
        return self._weighted_losses(s_cap, t_cap, student_logits, teacher_logits, mlm_labels, host)

    @staticmethod
    def _encode(model: PreTrainedModel, ids: Tensor, host: HostBatch, logits: bool) -> Tensor | None:
        """Run ``model`` on ``ids`` (its tap captures); with ``logits``, its MLM logits at the planned rows."""
        if logits:
            return mlm_logits_at(model, ids, host.attention_mask, host.rows)
        encoder = base_model(model)
        encoder(input_ids=ids, attention_mask=encoder_attention_mask(encoder, host.attention_mask))
        return None

    def _weighted_losses(
        self,
        s_cap: Captured,
        t_cap: Captured | None,
        student_logits: Tensor | None,
        teacher_logits: Tensor | None,
        mlm_labels: Tensor | None,
        host: HostBatch,
    ) -> dict[str, Tensor]:
        """Each term's loss and ``"loss"`` = ``sum(weight * term)`` (+ the DirectMiniLM orthogonality)."""
        mask = host.attention_mask
        losses: dict[str, Tensor] = {}
        if "hs" in self.weights:
            losses["hs"] = hidden_state_loss(
                s_cap.hidden, t_cap.hidden, self._mapping, self.hs_projections, mask
            )
        if "od" in self.weights:  # the rows are the OD positions
            losses["od"] = output_distribution_loss(student_logits, teacher_logits, self.cfg.temperature)
        if self.qkv_layers is not None:
            s_qkv, t_qkv = s_cap.qkv[self.qkv_layers[0]], t_cap.qkv[self.qkv_layers[1]]
            if "minilmv2" in self.weights:
                losses["minilmv2"] = minilmv2_loss(s_qkv, t_qkv, mask, self.cfg.relation_heads)
            if "direct_minilm" in self.weights:
                losses["direct_minilm"] = direct_minilm_loss(s_qkv, t_qkv, mask, self.direct_maps)
        if "cosine" in self.weights:
            losses["cosine"] = cosine_hidden_loss(
                s_cap.hidden[self.num_student_layers], t_cap.hidden[self.num_teacher_layers], mask
            )
        if "mlm" in self.weights:
            rows = student_logits if host.mlm_rows is None else student_logits.index_select(0, host.mlm_rows)
            losses["mlm"] = mlm_loss(rows, mlm_labels)
        total = sum(self.weights[name] * value for name, value in losses.items())
        if "direct_minilm" in self.weights and self.cfg.orthogonal_weight > 0:
            losses["orthogonality"] = self.direct_maps.orthogonality_penalty()
            total = total + self.cfg.orthogonal_weight * losses["orthogonality"]
        losses["loss"] = total
        return losses
