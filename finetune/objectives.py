"""Training objectives as modules with one interface: ``forward(batch) -> {term: loss, "loss": total}``
and ``logits(inputs)`` for evaluation.

:class:`FinetuneObjective` is plain fine-tuning (CE, or MSE for regression). :class:`TaskDistiller` is
the one task-specific distillation mechanism, parameterised by method::

    L = w_ce * CE(z^S, y) + w_kd * KD_T(z^S, z^T) + w_layer * L_layer

=========  ==============================================  ==========================================
method     L_layer                                          defaults (w_ce, w_kd, w_layer, T, T^2)
=========  ==============================================  ==========================================
vanilla    none                                             0.5, 0.5, 0, 2, yes
pkd        normalised [CLS] MSE, skip/last layers (PKD)      0.5, 0.5, 100, 10, yes
rail_l     RAIL-KD_l eq. 2 on random sorted layers           1/3, 1/3, 1/3, 1, yes (eq. 4)
rail_c     RAIL-KD_c eq. 3 on random sorted layers           1/3, 1/3, 1/3, 1, yes (eq. 4)
ild_rtc    normalised [CLS] MSE, g(m) = floor(N/M) m (eq. 1)  0.5, 0.5, 100, 10, no (eqs. 2-3)
=========  ==============================================  ==========================================

The teacher is held but not registered as a submodule (never trained, never in the optimizer or in
``state_dict``). Student layer ``m = 1..M-1`` are distilled (the last layer is covered by the KD term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from finetune.finetune_config import DistillConfig
from finetune.kd_losses import kd_logit_loss, layer_distance_loss, mean_pool, task_loss
from finetune.modeling import RTCClassifier, classification_head, head_only, head_state
from pretrain_distill.core.seeds import torch_generator
from pretrain_distill.models.families import encoder_layers
from pretrain_distill.objectives.mappings import layer_mapping

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

METHOD_DEFAULTS: dict[str, dict] = {
    "vanilla": {"ce_weight": 0.5, "kd_weight": 0.5, "layer_weight": 0.0, "temperature": 2.0, "kd_t2": True},
    "pkd": {"ce_weight": 0.5, "kd_weight": 0.5, "layer_weight": 100.0, "temperature": 10.0, "kd_t2": True},
    "rail_l": {
        "ce_weight": 1 / 3,
        "kd_weight": 1 / 3,
        "layer_weight": 1 / 3,
        "temperature": 1.0,
        "kd_t2": True,
    },
    "rail_c": {
        "ce_weight": 1 / 3,
        "kd_weight": 1 / 3,
        "layer_weight": 1 / 3,
        "temperature": 1.0,
        "kd_t2": True,
    },
    "ild_rtc": {
        "ce_weight": 0.5,
        "kd_weight": 0.5,
        "layer_weight": 100.0,
        "temperature": 10.0,
        "kd_t2": False,
    },
}


@dataclass(frozen=True)
class KDWeights:
    """A method's resolved loss weights and KD temperature."""

    ce_weight: float
    kd_weight: float
    layer_weight: float
    temperature: float
    kd_t2: bool


def resolve_weights(cfg: DistillConfig) -> KDWeights:
    """The method's defaults, overridden by every field set in ``cfg``."""
    values = dict(METHOD_DEFAULTS[cfg.method])
    values.update({k: getattr(cfg, k) for k in values if getattr(cfg, k) is not None})
    if values["temperature"] <= 0:
        raise ValueError(f"distill.temperature must be positive, got {values['temperature']}")
    return KDWeights(**values)


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class FinetuneObjective(nn.Module):
    """Plain fine-tuning: the task loss of the classifier."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def logits(self, inputs: dict) -> torch.Tensor:
        return self.model(**model_inputs(inputs)).logits

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        loss = task_loss(self.logits(batch), batch["labels"])
        return {"ce": loss, "loss": loss}

    def set_epoch(self, epoch: int) -> None:
        """Nothing is redrawn in plain fine-tuning."""

    def export(self) -> PreTrainedModel:
        return self.model


def skip_layers(num_teacher: int, num_student: int) -> list[int]:
    """PKD-skip / ILD-RTC uniform mapping ``g(m) = floor(N/M) * m`` for ``m = 1..M-1``."""
    return [(num_teacher // num_student) * m for m in range(1, num_student)]


def last_layers(num_teacher: int, num_student: int) -> list[int]:
    """PKD-last: the M-1 teacher layers just below the last, ``N-M+1 .. N-1``."""
    return [num_teacher - num_student + m for m in range(1, num_student)]


class TaskDistiller(nn.Module):
    """Student + the method's learned maps; ``forward`` returns the loss terms (module docstring)."""

    def __init__(self, cfg: DistillConfig, student: PreTrainedModel, teacher: PreTrainedModel, seed: int = 0):
        super().__init__()
        self.method = cfg.method
        self.weights = resolve_weights(cfg)
        self.student = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # held, not registered
        self.seed = seed
        n, m = len(encoder_layers(teacher)), len(encoder_layers(student))
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        if teacher.config.num_labels != student.config.num_labels:
            raise ValueError(
                f"teacher has {teacher.config.num_labels} labels, student {student.config.num_labels}"
            )
        if teacher.config.vocab_size != student.config.vocab_size:  # one tokenizer feeds both
            raise ValueError(
                f"teacher vocab {teacher.config.vocab_size} != student vocab {student.config.vocab_size}"
            )
        self.num_teacher_layers, self.num_student_layers = n, m
        if self.method != "vanilla" and not 1 < m <= n:
            raise ValueError(
                f"{self.method} distils student layers 1..M-1: needs 1 < M <= N, got M={m}, N={n}"
            )
        self.projector: nn.Module = nn.Identity()
        self.student_maps = nn.ModuleList()
        self.teacher_maps = nn.ModuleList()
        if self.method in ("pkd", "ild_rtc"):
            if d_s != d_t:
                self.projector = nn.Linear(d_s, d_t)  # student -> teacher width (ILD-RTC section 3.1)
            use_last = self.method == "pkd" and cfg.pkd_strategy == "last"
            self.teacher_layers = (last_layers if use_last else skip_layers)(n, m)
        elif self.method in ("rail_l", "rail_c"):
            k = 1 if self.method == "rail_c" else m - 1  # one map per layer, or one over the concatenation
            widen = m - 1 if self.method == "rail_c" else 1
            self.student_maps.extend(nn.Linear(d_s * widen, cfg.rail_dim) for _ in range(k))
            self.teacher_maps.extend(nn.Linear(d_t * widen, cfg.rail_dim) for _ in range(k))
            self.set_epoch(0)
        else:
            self.teacher_layers = []
        if self.method == "ild_rtc":
            self.__dict__["_teacher_head"] = classification_head(teacher)  # frozen, not registered

    @property
    def teacher(self) -> PreTrainedModel:
        return self.__dict__["teacher"]

    def to(self, *args, **kwargs):
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """RAIL-KD: draw M-1 sorted teacher layers from the intermediate ones ``1..N-1`` for this epoch
        (deterministic in ``(seed, epoch)``)."""
        if self.method not in ("rail_l", "rail_c"):
            return
        generator = torch_generator(self.seed, epoch)
        n, m = self.num_teacher_layers, self.num_student_layers
        mapping = layer_mapping("random", n, m - 1, generator=generator, candidates=range(1, n))
        self.teacher_layers = [layers[0] for layers in mapping]

    def _student_forward(self, inputs: dict):
        out = self.student(**inputs, output_hidden_states=True)
        if self.method == "ild_rtc":  # the reused teacher classifier on the projected last layer
            head_input = self.projector(out.hidden_states[-1])
            return self._teacher_head(head_input, inputs["attention_mask"]), out.hidden_states
        return out.logits, out.hidden_states

    def logits(self, inputs: dict) -> torch.Tensor:
        return self._student_forward(model_inputs(inputs))[0]

    def _layer_loss(self, s_hidden, t_hidden, attention_mask) -> torch.Tensor:
        student_layers = range(1, self.num_student_layers)
        if self.method in ("pkd", "ild_rtc"):  # first-token states, PKD L_PT / ILD-RTC eq. 1
            s = [self.projector(s_hidden[i][:, 0]) for i in student_layers]
            t = [t_hidden[j][:, 0] for j in self.teacher_layers]
            return layer_distance_loss(s, t)
        s = [mean_pool(s_hidden[i], attention_mask) for i in student_layers]
        t = [mean_pool(t_hidden[j], attention_mask) for j in self.teacher_layers]
        if self.method == "rail_c":
            s, t = [torch.cat(s, dim=-1)], [torch.cat(t, dim=-1)]
        s = [f(x) for f, x in zip(self.student_maps, s)]
        t = [f(x) for f, x in zip(self.teacher_maps, t)]
        return layer_distance_loss(s, t)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        inputs = model_inputs(batch)
        w = self.weights
        with torch.no_grad():
            t_out = self.teacher(**inputs, output_hidden_states=self.method != "vanilla")
        logits, s_hidden = self._student_forward(inputs)
        terms = {
            "ce": task_loss(logits, batch["labels"]),
            "kd": kd_logit_loss(logits, t_out.logits, w.temperature, w.kd_t2),
        }
        total = w.ce_weight * terms["ce"] + w.kd_weight * terms["kd"]
        if self.method != "vanilla":
            terms["layer"] = self._layer_loss(s_hidden, t_out.hidden_states, inputs["attention_mask"])
            total = total + w.layer_weight * terms["layer"]
        return terms | {"loss": total}

    def export(self) -> PreTrainedModel | RTCClassifier:
        """The student as a stand-alone classifier, exactly as it computed its logits. ILD-RTC with equal
        widths: the teacher's classifier (and pooler) weights are written into the student's head. With a
        narrower student: an :class:`RTCClassifier` (student, projector, the teacher's head)."""
        if self.method != "ild_rtc":
            return self.student
        if not isinstance(self.projector, nn.Identity):
            return RTCClassifier(self.student, self.projector, head_only(self.teacher))
        head = head_state(self.teacher)
        missing = set(head) - set(self.student.state_dict())
        if missing:
            raise ValueError(f"student has no {sorted(missing)[0]} to take the teacher's classifier")
        self.student.load_state_dict(head, strict=False)
        return self.student
