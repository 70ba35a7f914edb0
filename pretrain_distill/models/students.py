"""Student encoders of any shape ``[layers, heads, hidden, ffn]``, of the teacher's family or another one.

The paper's students (Table 1 of 2310.08797) are :data:`PRESETS`; any other shape is given by numbers.
A student of the teacher's family copies everything but its shape from the teacher's config (vocabulary,
position and token type embeddings, activation, norms); a student of another family (``family=
"modernbert"`` for a BERT teacher) takes the teacher's vocabulary, positions and special-token ids: either
way the tokenizer and inputs are shared. ``init="teacher"`` is DistilBERT's initialisation: copy every
teacher tensor outside the layer list and the teacher layer that the uniform mapping
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
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pretrain_distill.core.console import loading_quietly
from pretrain_distill.models.families import (
    Family,
    attention_implementation,
    base_model,
    derived_config,
    detect_family,
    encoder_layers,
    family_for_model_type,
    family_of,
    mlm_head,
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
    return StudentSpec(*(getattr(config, f) for f in family_of(config).shape_fields))


def student_family(name: str | None, teacher_config: PretrainedConfig) -> Family:
    """The family a student is built in: ``name`` (a model type such as ``modernbert``), or the teacher's."""
    return family_for_model_type(name) if name else family_of(teacher_config)


def student_config(
    spec: SpecLike,
    teacher_config: PretrainedConfig,
    family: str | None = None,
    token_ids: dict[str, int] | None = None,
) -> PretrainedConfig:
    """The config of a student of shape ``spec`` in ``family`` (default: the teacher's), sharing the
    teacher's vocabulary (see :func:`pretrain_distill.models.families.derived_config`)."""
    spec = resolve_spec(spec)
    chosen = student_family(family, teacher_config)
    return derived_config(chosen, dict(zip(chosen.shape_fields, spec.as_list())), teacher_config, token_ids)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The special-token ids a student config records, from the tokenizer it shares with the teacher
    (bos / eos default to the tokenizer's [CLS] / [SEP], as in ModernBERT's and EuroBERT's configs)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": cls,
        "sep_token_id": sep,
        "mask_token_id": tokenizer.mask_token_id,
        "bos_token_id": cls if tokenizer.bos_token_id is None else tokenizer.bos_token_id,
        "eos_token_id": sep if tokenizer.eos_token_id is None else tokenizer.eos_token_id,
    }
    return {k: v for k, v in ids.items() if v is not None}


def teacher_layers_for_init(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """1-based teacher layer copied into each student layer: ``min(k*i, L_T)``, ``k = ceil(L_T/L_S)``."""
    if num_student_layers > num_teacher_layers:
        raise ValueError(
            f"init='teacher' needs at most as many student layers as teacher layers, "
            f"got {num_student_layers} > {num_teacher_layers}"
        )
    k = math.ceil(num_teacher_layers / num_student_layers)
    return [min(k * i, num_teacher_layers) for i in range(1, num_student_layers + 1)]


def _teacher_key(key: str, s_prefix: str, t_prefix: str, layers: str, teacher_layers: Sequence[int]) -> str:
    """The teacher state-dict key a student key is copied from (layer ``i`` <- teacher layer
    ``teacher_layers[i]``; everything else under the same name)."""
    if not key.startswith(s_prefix):  # a task head (MLM head, classifier): same name in the teacher
        return key
    relative = key[len(s_prefix) :]
    if relative.startswith(layers + "."):
        index, _, rest = relative[len(layers) + 1 :].partition(".")
        relative = f"{layers}.{teacher_layers[int(index)] - 1}.{rest}"
    return t_prefix + relative


def copy_from_teacher(
    student: PreTrainedModel, teacher: PreTrainedModel, teacher_layers: Sequence[int], with_head: bool
) -> list[str]:
    """Copy into ``student`` every base-model tensor of ``teacher`` outside its layer list (embeddings,
    DeBERTa's ``rel_embeddings``, final norms, ELECTRA's ``embeddings_project``, ...), teacher layer
    ``teacher_layers[i]`` (1-based) into student layer ``i``, and with ``with_head`` the task head too.
    Same family and widths (a tensor of another shape is an error). Returns the student parameters left as
    they were (new)."""
    family = detect_family(student)
    if detect_family(teacher) is not family:
        raise ValueError(
            f"copying from the teacher needs the teacher's family, got {family.name} and "
            f"{detect_family(teacher).name}"
        )
    s_prefix = "" if base_model(student) is student else student.base_model_prefix + "."
    t_prefix = "" if base_model(teacher) is teacher else teacher.base_model_prefix + "."
    source = teacher.state_dict()
    copied: set[int] = set()
    with torch.no_grad():
        for key, tensor in student.state_dict(keep_vars=True).items():
            if not with_head and not key.startswith(s_prefix):
                continue
            t_key = _teacher_key(key, s_prefix, t_prefix, family.layers, teacher_layers)
            if t_key not in source:
                continue
            if source[t_key].shape != tensor.shape:
                raise ValueError(
                    f"cannot copy teacher {t_key} {list(source[t_key].shape)} into student {key} "
                    f"{list(tensor.shape)}"
                )
            tensor.copy_(source[t_key])
            copied.add(id(tensor))
    return [name for name, p in student.named_parameters() if id(p) not in copied]


def _init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel) -> list[str]:
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
    if family_of(student.config) is not family_of(teacher.config):
        raise ValueError(
            f"init='teacher' needs the teacher's family: student {family_of(student.config).name}, "
            f"teacher {family_of(teacher.config).name} (use init='random')"
        )
    layers = teacher_layers_for_init(len(encoder_layers(teacher)), len(encoder_layers(student)))
    with_head = mlm_head(student) is not None and type(student) is type(teacher)
    return copy_from_teacher(student, teacher, layers, with_head)


def build_student(
    spec: SpecLike,
    teacher_config: PretrainedConfig,
    init: Literal["random", "teacher"] = "random",
    teacher: PreTrainedModel | None = None,
    with_mlm_head: bool = True,
    family: str | None = None,
    attention: str = "auto",
    token_ids: dict[str, int] | None = None,
) -> PreTrainedModel:
    """A student of ``family`` (default: the teacher's), ``*ForMaskedLM`` unless ``with_mlm_head=False``.

    ``init="teacher"`` (needs ``teacher``, of the same family and widths) copies every teacher tensor outside
    the layer list, every k-th layer and, when the teacher has one, its MLM head. ``attention``: ``auto`` (the
    family's preferred implementation), ``sdpa``, ``eager`` or ``flash_attention_2``. Built on the current
    default device (use ``with torch.device("meta")`` to count parameters without allocating).
    """
    spec = resolve_spec(spec)
    if init not in ("random", "teacher"):
        raise ValueError(f"student init must be 'random' or 'teacher', got {init!r}")
    config = student_config(spec, teacher_config, family, token_ids)
    factory = AutoModelForMaskedLM if with_mlm_head else AutoModel
    student = factory.from_config(
        config, attn_implementation=attention_implementation(family_of(config), attention)
    )
    if init == "teacher":
        if teacher is None:
            raise ValueError("init='teacher' needs the teacher model (teacher=...)")
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


def _load_init_from(
    path: Path, spec: StudentSpec, teacher: PreTrainedModel, student_cfg: StudentConfig, token_ids
) -> PreTrainedModel:
    family = student_family(student_cfg.family, teacher.config)
    if path.is_dir():
        config = AutoConfig.from_pretrained(path)
        if family_of(config) is not family:
            raise ValueError(
                f"student.init_from {path} is a {config.model_type!r} model, the student a {family.name} one "
                f"(student.family {student_cfg.family or 'unset: the teacher' + chr(39) + 's'})"
            )
        if spec_of(config) != spec:
            raise ValueError(
                f"student.init_from {path} holds a {spec_of(config).as_list()} model but the "
                f"student config asks for {spec.as_list()}: make them agree"
            )
        attention = attention_implementation(family, student_cfg.attention)
        with loading_quietly():  # an export is the base encoder: the missing MLM head is said below
            student, info = AutoModelForMaskedLM.from_pretrained(
                path, attn_implementation=attention, output_loading_info=True
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
        return student
    if path.is_file():
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        student = build_student(
            spec,
            teacher.config,
            family=student_cfg.family,
            attention=student_cfg.attention,
            token_ids=token_ids,
        )
        student.load_state_dict(state)
        return student
    raise FileNotFoundError(
        f"student.init_from {path}: no such Hugging Face model directory or state-dict file"
    )


def build_student_from_config(
    student_cfg: StudentConfig, teacher: PreTrainedModel, token_ids: dict[str, int] | None = None
) -> PreTrainedModel:
    """The student a :class:`StudentConfig` describes, as ``*ForMaskedLM``, in ``student.family`` (default:
    the teacher's), with the special-token ids ``token_ids`` (see :func:`special_token_ids`).

    ``init_from`` (a Hugging Face model directory such as an exported student, or a state-dict file
    ``.safetensors`` / ``.pt`` / ``.bin``) wins over ``init``; its family and shape must match the config's.
    """
    spec = spec_from_config(student_cfg)
    if student_cfg.init_from:
        return _load_init_from(Path(student_cfg.init_from), spec, teacher, student_cfg, token_ids)
    return build_student(
        spec,
        teacher.config,
        init=student_cfg.init,
        teacher=teacher,
        family=student_cfg.family,
        attention=student_cfg.attention,
        token_ids=token_ids,
    )
