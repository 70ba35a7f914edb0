"""The frozen teacher: truncation keeps the states it reads, MLM-head check, dtype, freezing."""

from __future__ import annotations

import pytest
import torch

from pretrain_distill.models import (
    MissingMLMHeadError,
    Tap,
    base_model,
    build_teacher,
    freeze,
    has_mlm_head,
    teacher_dtype,
    truncate_layers,
)
from pretrain_distill.models.families import detect_family, encoder_layers
from pretrain_distill.run_config import TeacherConfig


def test_truncated_teacher_gives_the_same_states_for_the_layers_read(tiny_model, batch):
    freeze(tiny_model)
    with torch.no_grad():
        full = base_model(tiny_model)(**batch, output_hidden_states=True).hidden_states
    truncate_layers(tiny_model, 1)
    assert len(encoder_layers(tiny_model)) == 1
    tap = Tap(tiny_model, hidden_layers=[0, 1], qkv_layers=[1])
    with torch.no_grad():
        last = base_model(tiny_model)(**batch).last_hidden_state
    captured = tap.pop()
    assert torch.equal(captured.hidden[0], full[0]) and torch.equal(captured.hidden[1], full[1])
    if detect_family(tiny_model).final_norm is None:  # pre-LN models put layer 1 through their final norm
        assert torch.equal(last, full[1])


def test_truncate_refuses_impossible_depths(tiny_bert):
    with pytest.raises(ValueError, match="cannot truncate BertForMaskedLM to 3 layers: it has 2"):
        truncate_layers(tiny_bert, 3)
    with pytest.raises(ValueError, match="to 0 layers"):
        truncate_layers(tiny_bert, 0)


def test_freeze_and_has_mlm_head(tiny_bert):
    freeze(tiny_bert.train())
    assert not tiny_bert.training and not any(p.requires_grad for p in tiny_bert.parameters())
    assert has_mlm_head(tiny_bert) and not has_mlm_head(tiny_bert.bert)


def test_teacher_dtype():
    assert teacher_dtype("auto", "cpu") == torch.float32
    assert teacher_dtype("auto", "cuda") == torch.bfloat16
    assert teacher_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="got 'int8'"):
        teacher_dtype("int8", "cpu")


@pytest.mark.integration
def test_build_teacher_loads_minilm_frozen_without_pooler(teacher_dir):
    teacher = build_teacher(TeacherConfig(path=str(teacher_dir)), dtype=torch.bfloat16)
    assert type(teacher).__name__ == "BertModel" and teacher.pooler is None
    assert teacher.dtype == torch.bfloat16 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.config._attn_implementation == "sdpa"


@pytest.mark.integration
def test_build_teacher_with_mlm_head_refuses_headless_minilm(teacher_dir):
    with pytest.raises(MissingMLMHeadError, match="has no trained MLM head .*cls.predictions.*fit-mlm-head"):
        build_teacher(TeacherConfig(path=str(teacher_dir)), needs_mlm_head=True)


def test_a_teacher_loads_without_transformers_load_report(tiny_teacher_dir):
    """The tiny teacher is a BertForMaskedLM: loaded as the bare encoder, its MLM head is unexpected and
    its pooler missing, neither of which the run reads; transformers' report of them is not shown."""
    import logging

    class Heard(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    # Listen on the library's own logger: whether it propagates to the root depends on earlier tests.
    heard, library = Heard(), logging.getLogger("transformers")
    library.addHandler(heard)
    try:
        logging.getLogger("transformers.modeling_utils").warning("canary")  # the listener hears it
        build_teacher(TeacherConfig(path=str(tiny_teacher_dir)))
    finally:
        library.removeHandler(heard)
    assert heard.messages == ["canary"]


def test_a_teacher_without_its_encoder_weights_is_refused(tiny_teacher_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "teacher"
    broken.mkdir()
    for item in tiny_teacher_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks encoder weights \(encoder.layer.1.attention"):
        build_teacher(TeacherConfig(path=str(broken)))
