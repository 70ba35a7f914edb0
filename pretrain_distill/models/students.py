"""Student encoders of any shape ``[layers, heads, hidden, ffn]``, of the teacher's family.

The paper's students (Table 1 of 2310.08797) are :data:`PRESETS`; any other shape is given by numbers.
A student copies everything but its shape from the teacher's config (vocabulary, position and token
type embeddings, activation, norms), so tokenizer and inputs are shared. ``init="teacher"`` is
DistilBERT's initialisation: copy the embeddings and the teacher layer that the uniform mapping
``phi(i) = min(k*i, L_T)``, ``k = ceil(L_T / L_S)``, assigns to each student layer ``i``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from pretrain_distill.core.console import loading_quietly
from pretrain_distill.models.families import (
    base_model,
    detect_family,
    encoder_layers,
    family_for_model_type,
)
from pretrain_distill.run_config import StudentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSpec:
    """A student shape: Transformer ``layers`` L, attention ``heads`` A_h, ``hidden`` d_h, ``ffn`` d_f."""

    layers: int
    heads: int
    hidden: int
    ffn: int

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "hidden", "ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"student {name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"student heads ({self.heads}) must divide hidden ({self.hidden}): "
                f"{self.hidden} / {self.heads} = {self.hidden / self.heads:g}"
            )

    def as_list(self) -> list[int]:
        """``[layers, heads, hidden, ffn]`` as written in the paper's Table 1."""
        return [self.layers, self.heads, self.hidden, self.ffn]


#: The paper's students (Table 1), ``[L, A_h, d_h, d_f]``.
PRESETS: dict[str, StudentSpec] = {
    "6L-DistilBERT": StudentSpec(6, 12, 768, 3072),
    "6L": StudentSpec(6, 12, 384, 1536),
    "4L": StudentSpec(4, 12, 576, 768),
    "3L": StudentSpec(3, 12, 384, 1024),
}

SpecLike = StudentSpec | str | Sequence[int]


def resolve_spec(spec: SpecLike) -> StudentSpec:
    """A :class:`StudentSpec` from a preset name, a ``[layers, heads, hidden, ffn]`` list or a spec."""
    if isinstance(spec, StudentSpec):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown student preset {spec!r} (presets: {', '.join(PRESETS)})")
        return PRESETS[spec]
    values = list(spec)
    if len(values) != 4:
        raise ValueError(f"a student shape is [layers, heads, hidden, ffn], got {values!r}")
    return StudentSpec(*values)


def spec_of(config: PretrainedConfig) -> StudentSpec:
    """The ``[layers, heads, hidden, ffn]`` shape of a model config (student or teacher)."""
    fields = family_for_model_type(config.model_type).shape_fields
    return StudentSpec(*(getattr(config, f) for f in fields))


def student_config(spec: SpecLike, teacher_config: PretrainedConfig) -> PretrainedConfig:
    """The teacher's config with the student's shape (same family, vocabulary and embeddings)."""
    spec = resolve_spec(spec)
    fields = family_for_model_type(teacher_config.model_type).shape_fields
    values = teacher_config.to_dict()
    for key in ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        values.pop(key, None)
    values.update(dict(zip(fields, spec.as_list())))
    return type(teacher_config).from_dict(values)


def teacher_layers_for_init(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """1-based teacher layer copied into each student layer: ``min(k*i, L_T)``, ``k = ceil(L_T/L_S)``."""
    if num_student_layers > num_teacher_layers:
        raise ValueError(
            f"init='teacher' needs at most as many student layers as teacher layers, "
            f"got {num_student_layers} > {num_teacher_layers}"
        )
    k = math.ceil(num_teacher_layers / num_student_layers)
    return [min(k * i, num_teacher_layers) for i in range(1, num_student_layers + 1)]


def _init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    s_spec, t_spec = spec_of(student.config), spec_of(teacher.config)
    mismatched = [
        f"{name} {s} != {t}"
        for name, s, t in zip(("heads", "hidden", "ffn"), s_spec.as_list()[1:], t_spec.as_list()[1:])
        if s != t
    ]
    if mismatched:
        raise ValueError(
            "init='teacher' copies teacher weights, so the student's heads, hidden and ffn must equal "
            f"the teacher's; mismatched: {', '.join(mismatched)} (use init='random')"
        )
    if type(base_model(student)) is not type(base_model(teacher)):
        raise ValueError(
            f"init='teacher' needs the teacher's family: student {type(base_model(student)).__name__}, "
            f"teacher {type(base_model(teacher)).__name__}"
        )
    s_base, t_base = base_model(student), base_model(teacher)
    with torch.no_grad():
        s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())
        s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        for s_index, t_layer in enumerate(teacher_layers_for_init(len(t_layers), len(s_layers))):
            s_layers[s_index].load_state_dict(t_layers[t_layer - 1].state_dict())
        if type(student) is type(teacher):  # both have the MLM head: copy it too
            prefix = student.base_model_prefix + "."
            head = {k: v for k, v in teacher.state_dict().items() if not k.startswith(prefix)}
            student.load_state_dict(head, strict=False)


def build_student(
    spec: SpecLike,
    teacher_config: PretrainedConfig,
    init: Literal["random", "teacher"] = "random",
    teacher: PreTrainedModel | None = None,
    with_mlm_head: bool = True,
) -> PreTrainedModel:
    """A student of the teacher's family (``*ForMaskedLM`` unless ``with_mlm_head=False``).

    ``init="teacher"`` (needs ``teacher``) copies the teacher's embeddings, every k-th layer and, when the
    teacher has one, its MLM head; widths must match. Built on the current default device (use
    ``with torch.device("meta")`` to count parameters without allocating).
    """
    spec = resolve_spec(spec)
    if init not in ("random", "teacher"):
        raise ValueError(f"student init must be 'random' or 'teacher', got {init!r}")
    config = student_config(spec, teacher_config)
    factory = AutoModelForMaskedLM if with_mlm_head else AutoModel
    student = factory.from_config(config, attn_implementation="sdpa")
    if init == "teacher":
        if teacher is None:
            raise ValueError("init='teacher' needs the teacher model (teacher=...)")
        detect_family(teacher)
        _init_from_teacher(student, teacher)
    return student


def encoder_parameter_count(model: nn.Module) -> int:
    """Parameters of the encoder alone (embeddings + layers; no MLM head, no pooler), as in Table 1."""
    base = base_model(model)
    pooler = getattr(base, "pooler", None)
    skip = {id(p) for p in pooler.parameters()} if pooler is not None else set()
    return sum(p.numel() for p in base.parameters() if id(p) not in skip)


def spec_from_config(student_cfg: StudentConfig) -> StudentSpec:
    """The shape a :class:`StudentConfig` asks for: its preset, with any number given overriding it."""
    numbers = {k: getattr(student_cfg, k) for k in ("layers", "heads", "hidden", "ffn")}
    if student_cfg.preset is None:
        unset = [k for k, v in numbers.items() if v is None]
        if unset:
            raise ValueError(f"student.preset is null, so student.{', student.'.join(unset)} must be set")
        return StudentSpec(**numbers)
    base = resolve_spec(student_cfg.preset)
    return replace(base, **{k: v for k, v in numbers.items() if v is not None})


def _load_init_from(path: Path, spec: StudentSpec, teacher: PreTrainedModel) -> PreTrainedModel:
    if path.is_dir():
        with loading_quietly():  # an export is the base encoder: the missing MLM head is said below
            student, info = AutoModelForMaskedLM.from_pretrained(
                path, attn_implementation="sdpa", output_loading_info=True
            )
        prefix = student.base_model_prefix + "."
        if any(k.startswith(prefix) for k in info["missing_keys"]):
            raise ValueError(f"student.init_from {path}: lacks encoder weights ({info['missing_keys']})")
        if info["missing_keys"]:
            log.warning(
                "student.init_from %s holds no MLM head: the student's starts from random weights "
                "(only the od and mlm terms read it)",
                path,
            )
        if spec_of(student.config) != spec:
            raise ValueError(
                f"student.init_from {path} holds a {spec_of(student.config).as_list()} model but the "
                f"student config asks for {spec.as_list()}: make them agree"
            )
        if student.config.model_type != teacher.config.model_type:
            raise ValueError(
                f"student.init_from {path} is a {student.config.model_type!r} model, the teacher a "
                f"{teacher.config.model_type!r} one"
            )
        return student
    if path.is_file():
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        student = build_student(spec, teacher.config)
        student.load_state_dict(state)
        return student
    raise FileNotFoundError(
        f"student.init_from {path}: no such Hugging Face model directory or state-dict file"
    )


def build_student_from_config(student_cfg: StudentConfig, teacher: PreTrainedModel) -> PreTrainedModel:
    """The student a :class:`StudentConfig` describes, of ``teacher``'s family, as ``*ForMaskedLM``.

    ``init_from`` (a Hugging Face model directory such as an exported student, or a state-dict file
    ``.safetensors`` / ``.pt`` / ``.bin``) wins over ``init``; its shape must match the config's.
    """
    spec = spec_from_config(student_cfg)
    if student_cfg.init_from:
        return _load_init_from(Path(student_cfg.init_from), spec, teacher)
    return build_student(spec, teacher.config, init=student_cfg.init, teacher=teacher)
