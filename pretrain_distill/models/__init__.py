"""Encoder families (as data), student presets and factory, the frozen teacher, and taps that capture
hidden states and Q/K/V."""

from pretrain_distill.models.families import (
    FAMILIES,
    MODEL_TYPES,
    Family,
    UnsupportedArchitectureError,
    base_model,
    detect_family,
    family_for_model_type,
    family_of,
)
from pretrain_distill.models.students import (
    PRESETS,
    StudentSpec,
    build_student,
    build_student_from_config,
    copy_from_teacher,
    encoder_parameter_count,
    resolve_spec,
    spec_from_config,
    spec_of,
    special_token_ids,
    teacher_layers_for_init,
)
from pretrain_distill.models.taps import QKV, Captured, Tap
from pretrain_distill.models.teacher import (
    MissingMLMHeadError,
    build_teacher,
    freeze,
    has_mlm_head,
    teacher_dtype,
    teacher_tokenizer,
    truncate_layers,
)

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "PRESETS",
    "QKV",
    "Captured",
    "Family",
    "MissingMLMHeadError",
    "StudentSpec",
    "Tap",
    "UnsupportedArchitectureError",
    "base_model",
    "build_student",
    "build_student_from_config",
    "build_teacher",
    "copy_from_teacher",
    "detect_family",
    "encoder_parameter_count",
    "family_for_model_type",
    "family_of",
    "freeze",
    "has_mlm_head",
    "resolve_spec",
    "spec_from_config",
    "spec_of",
    "special_token_ids",
    "teacher_dtype",
    "teacher_layers_for_init",
    "teacher_tokenizer",
    "truncate_layers",
]
