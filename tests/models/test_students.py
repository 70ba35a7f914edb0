"""Student presets, shapes, families, DistilBERT-style init and config-driven construction."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, GPT2Config, XLMRobertaConfig

from pretrain_distill.models import (
    PRESETS,
    StudentSpec,
    UnsupportedArchitectureError,
    build_student,
    build_student_from_config,
    encoder_parameter_count,
    resolve_spec,
    spec_from_config,
    spec_of,
    teacher_layers_for_init,
)
from pretrain_distill.models.families import encoder_layers
from pretrain_distill.run_config import StudentConfig

# Table 1 of 2310.08797: parameters in millions, BERT vocab (30522) / XLM-R vocab (250002).
TABLE1 = {"6L-DistilBERT": (66, 234), "6L": (23, 106), "4L": (27, 153), "3L": (16, 100)}
BERT_BASE = BertConfig()  # 30522 vocab, 512 positions, 2 token types
XLMR_BASE = XLMRobertaConfig(
    vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1
)


def _millions(spec: StudentSpec, teacher_config) -> float:
    with torch.device("meta"):
        return encoder_parameter_count(build_student(spec, teacher_config)) / 1e6


@pytest.mark.parametrize("name", list(TABLE1))
def test_presets_match_table1_parameter_counts(name):
    mono, multi = TABLE1[name]
    assert round(_millions(PRESETS[name], BERT_BASE)) == mono
    assert abs(_millions(PRESETS[name], XLMR_BASE) - multi) < 1.0  # the paper truncates these


def test_teacher_shape_counts_as_bert_base():
    # 108.9M without the pooler (109.5M with it); the paper quotes BERT-base's customary 110M.
    assert abs(_millions(StudentSpec(12, 12, 768, 3072), BERT_BASE) - 110) < 1.2


def test_presets_are_the_papers_shapes():
    assert {k: v.as_list() for k, v in PRESETS.items()} == {
        "6L-DistilBERT": [6, 12, 768, 3072],
        "6L": [6, 12, 384, 1536],
        "4L": [4, 12, 576, 768],
        "3L": [3, 12, 384, 1024],
    }


@pytest.mark.parametrize(
    "shape, message",
    [
        ([3, 5, 64, 128], r"heads \(5\) must divide hidden \(64\)"),
        ([0, 4, 64, 128], "layers must be a positive integer, got 0"),
        ([2, 4, 64, -1], "ffn must be a positive integer, got -1"),
        ([2, 4.0, 64, 128], "heads must be a positive integer, got 4.0"),
        ([2, 4, 64], r"\[layers, heads, hidden, ffn\]"),
        ("7L", "unknown student preset '7L'"),
    ],
)
def test_invalid_shapes_raise_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        resolve_spec(shape)


def test_any_shape_by_numbers_keeps_teacher_embedding_sizes(tiny_bert_config):
    student = build_student([3, 2, 32, 48], tiny_bert_config)
    assert type(student).__name__ == "BertForMaskedLM"
    assert spec_of(student.config) == StudentSpec(3, 2, 32, 48)
    emb = student.bert.embeddings
    assert emb.word_embeddings.num_embeddings == tiny_bert_config.vocab_size
    assert emb.position_embeddings.num_embeddings == tiny_bert_config.max_position_embeddings
    assert emb.token_type_embeddings.num_embeddings == tiny_bert_config.type_vocab_size
    assert student.config._attn_implementation == "sdpa"


def test_students_are_of_the_teachers_family(tiny_model):
    student = build_student([1, 2, 32, 40], tiny_model.config)
    assert type(student) is type(tiny_model)
    assert student.config.vocab_size == tiny_model.config.vocab_size
    assert student.config.max_position_embeddings == tiny_model.config.max_position_embeddings
    assert build_student([1, 2, 32, 40], tiny_model.config, with_mlm_head=False).base_model is not None


def test_unsupported_family_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="model_type 'gpt2'"):
        build_student("3L", GPT2Config())


def test_teacher_init_copies_every_kth_layer_and_embeddings(tiny_bert_config):
    tiny_bert_config.num_hidden_layers = 4
    teacher = build_student([4, 4, 64, 128], tiny_bert_config)
    student = build_student([2, 4, 64, 128], tiny_bert_config, init="teacher", teacher=teacher)
    assert teacher_layers_for_init(4, 2) == [2, 4]
    for s_layer, t_layer in zip(encoder_layers(student), [encoder_layers(teacher)[i] for i in (1, 3)]):
        for (name, s), t in zip(s_layer.state_dict().items(), t_layer.state_dict().values()):
            assert torch.equal(s, t), name
    for key, value in teacher.bert.embeddings.state_dict().items():
        assert torch.equal(student.bert.embeddings.state_dict()[key], value)
    assert torch.equal(
        student.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight
    )


def test_teacher_layers_for_init_clamps_and_refuses_deeper_students():
    assert teacher_layers_for_init(12, 6) == [2, 4, 6, 8, 10, 12]
    assert teacher_layers_for_init(6, 4) == [2, 4, 6, 6]
    with pytest.raises(ValueError, match="at most as many student layers"):
        teacher_layers_for_init(2, 3)


def test_teacher_init_refuses_other_widths_and_missing_teacher(tiny_bert_config):
    teacher = build_student([2, 4, 64, 128], tiny_bert_config)
    with pytest.raises(ValueError, match="mismatched: hidden 32 != 64, ffn 64 != 128"):
        build_student([2, 4, 32, 64], tiny_bert_config, init="teacher", teacher=teacher)
    with pytest.raises(ValueError, match=r"needs the teacher model"):
        build_student([2, 4, 64, 128], tiny_bert_config, init="teacher")
    with pytest.raises(ValueError, match="'random' or 'teacher'"):
        build_student([2, 4, 64, 128], tiny_bert_config, init="copy")


def test_spec_from_config_preset_overrides_and_numbers():
    assert spec_from_config(StudentConfig(preset="6L", layers=4)) == StudentSpec(4, 12, 384, 1536)
    assert spec_from_config(
        StudentConfig(preset=None, layers=3, heads=12, hidden=192, ffn=768)
    ) == StudentSpec(3, 12, 192, 768)
    with pytest.raises(ValueError, match="student.heads, student.ffn must be set"):
        spec_from_config(StudentConfig(preset=None, layers=3, hidden=192))


def test_build_student_from_config_random_and_init_from(tiny_bert_config, tmp_path):
    teacher = build_student([2, 4, 64, 128], tiny_bert_config)
    cfg = StudentConfig(preset=None, layers=1, heads=2, hidden=32, ffn=48)
    student = build_student_from_config(cfg, teacher)
    assert spec_of(student.config) == StudentSpec(1, 2, 32, 48)

    student.save_pretrained(tmp_path / "hf")
    cfg.init_from = str(tmp_path / "hf")
    reloaded = build_student_from_config(cfg, teacher)
    assert torch.equal(
        reloaded.bert.encoder.layer[0].output.dense.weight, student.bert.encoder.layer[0].output.dense.weight
    )

    torch.save(student.state_dict(), tmp_path / "student.pt")
    cfg.init_from = str(tmp_path / "student.pt")
    from_state = build_student_from_config(cfg, teacher)
    assert torch.equal(
        from_state.bert.embeddings.word_embeddings.weight, student.bert.embeddings.word_embeddings.weight
    )

    cfg.init_from, cfg.layers = str(tmp_path / "hf"), 2
    with pytest.raises(
        ValueError, match=r"holds a \[1, 2, 32, 48\] model but the student config asks for \[2, 2, 32, 48\]"
    ):
        build_student_from_config(cfg, teacher)
    cfg.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no such Hugging Face model directory"):
        build_student_from_config(cfg, teacher)


def test_init_from_a_base_encoder_export_says_the_head_is_new_in_one_line(tiny_bert_config, tmp_path, caplog):
    """An HS / MiniLMv2 export has no MLM head: one warning of ours, not transformers' load report."""
    from pretrain_distill.models import base_model

    teacher = build_student([2, 4, 64, 128], tiny_bert_config)
    cfg = StudentConfig(preset=None, layers=1, heads=2, hidden=32, ffn=48)
    base_model(build_student_from_config(cfg, teacher)).save_pretrained(tmp_path / "export")
    cfg.init_from = str(tmp_path / "export")
    library = logging.getLogger("transformers")  # it may not propagate: listen on it directly
    library.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING"):
            build_student_from_config(cfg, teacher)
    finally:
        library.removeHandler(caplog.handler)
    heard = {id(r): r.getMessage() for r in caplog.records}  # once, whether or not the library propagates
    assert list(heard.values()) == [
        f"student.init_from {tmp_path / 'export'} holds no MLM head: the student's starts from random "
        "weights (only the od and mlm terms read it)"
    ]


@pytest.mark.parametrize(
    "name, shape",
    [
        ("6L-DistilBERT", [6, 12, 768, 3072]),
        ("6L", [6, 12, 384, 1536]),
        ("4L", [4, 12, 576, 768]),
        ("3L", [3, 12, 384, 1024]),
        ("minilm_3x192", [3, 12, 192, 768]),
    ],
)
def test_student_yaml_configs(name, shape):
    from pretrain_distill.run_config import load_run_config

    cfg = load_run_config([f"students/{name}.yaml"])
    assert spec_from_config(cfg.student).as_list() == shape
