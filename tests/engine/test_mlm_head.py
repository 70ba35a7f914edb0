"""`pretrain-distill fit-mlm-head`: an MLM head fitted on a frozen headless teacher, for OD."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, BertModel

from pretrain_distill.mlm_head import fit_mlm_head, mlm_head_module
from pretrain_distill.models.teacher import MissingMLMHeadError, build_teacher
from pretrain_distill.run_config import TeacherConfig


@pytest.fixture
def headless_teacher(tmp_path, tiny_bert_config, tokenizer):
    """A tiny BertModel saved without MLM head weights, like all-MiniLM-L6-v2."""
    torch.manual_seed(0)
    path = tmp_path / "headless"
    BertModel(tiny_bert_config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_fits_only_the_head_and_loads_as_an_od_teacher(headless_teacher, one_batch_shards, tmp_path):
    with pytest.raises(MissingMLMHeadError):
        build_teacher(TeacherConfig(path=str(headless_teacher)), needs_mlm_head=True)
    out = tmp_path / "teacher_mlm"
    record = fit_mlm_head(
        str(headless_teacher), str(one_batch_shards), out, steps=40, batch_size=8, lr=0.1, report_last=10
    )

    # a fresh head starts at the uniform guess ln V; the fixed batch is learnable
    first, last = record["masked_loss_first_10_steps"], record["masked_loss_last_10_steps"]
    assert first > 0.9 * math.log(30522) and last < first - 2.0
    assert record["perplexity"] == pytest.approx(math.exp(last))
    assert json.loads((out / "mlm_head.json").read_text())["steps"] == 40
    assert record["trained"] == [
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]

    fitted = AutoModelForMaskedLM.from_pretrained(out)
    original = BertModel.from_pretrained(headless_teacher, add_pooling_layer=False)
    for name, value in original.state_dict().items():  # the encoder is untouched, bit for bit
        assert torch.equal(fitted.bert.state_dict()[name], value), name
    assert fitted.get_output_embeddings().weight is fitted.get_input_embeddings().weight  # still tied
    teacher = build_teacher(TeacherConfig(path=str(out)), needs_mlm_head=True)  # OD accepts it now
    assert teacher.get_output_embeddings() is not None


#: The head chain each family trains (a decoder tied to the input embeddings stays frozen).
HEADS = {
    "modernbert": ["decoder.bias", "head.dense.weight", "head.norm.weight"],
    "deberta-v2": [
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ],
    "electra": [
        "generator_lm_head.bias",
        "generator_predictions.LayerNorm.bias",
        "generator_predictions.LayerNorm.weight",
        "generator_predictions.dense.bias",
        "generator_predictions.dense.weight",
    ],
}


@pytest.mark.parametrize("model_type", sorted(HEADS))
def test_fits_head_chains_of_other_families(model_type, one_batch_shards, tmp_path, tokenizer):
    """A headless ModernBERT, a DeBERTa-v3 (trained without an MLM head) or an ELECTRA discriminator (no
    generator head): refused for OD, then fitted."""
    from tests.models.conftest import tiny_family_config

    torch.manual_seed(0)
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "cls_token_id", "sep_token_id")}
    config = tiny_family_config(model_type, vocab_size=len(tokenizer), layers=1, token_ids=ids)
    path = tmp_path / model_type
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    with pytest.raises(MissingMLMHeadError, match="fit-mlm-head"):
        build_teacher(TeacherConfig(path=str(path)), needs_mlm_head=True)
    record = fit_mlm_head(
        str(path), str(one_batch_shards), tmp_path / "fitted", steps=3, batch_size=4, report_last=1
    )
    assert record["trained"] == HEADS[model_type]
    fitted = AutoModelForMaskedLM.from_pretrained(tmp_path / "fitted")
    original = AutoModel.from_pretrained(path)
    for name, value in original.state_dict().items():  # the encoder is untouched, bit for bit
        assert torch.equal(fitted.base_model.state_dict()[name], value), name
    build_teacher(TeacherConfig(path=str(tmp_path / "fitted")), needs_mlm_head=True)  # OD accepts it now


def test_refuses_heads_it_does_not_know():
    """DeBERTa-v2's non-legacy head takes the word embeddings as a second input: not a chain."""
    from tests.models.conftest import tiny_family_config

    model = AutoModelForMaskedLM.from_config(tiny_family_config("deberta-v2", layers=1, legacy=False))
    with pytest.raises(ValueError, match="expected its family's MLM head modules cls next to the encoder"):
        mlm_head_module(model)


def test_refuses_bad_settings(headless_teacher, one_batch_shards, tmp_path):
    with pytest.raises(ValueError, match="must be positive"):
        fit_mlm_head(str(headless_teacher), str(one_batch_shards), tmp_path / "x", steps=0)


def test_out_is_replaced_whole_and_a_foreign_directory_refused(headless_teacher, one_batch_shards, tmp_path):
    """A refit replaces an earlier output whole (nothing of it left over, no staging behind); a
    directory that is not one is refused before any training, and left as it was."""
    out = tmp_path / "teacher_mlm"
    fit = dict(teacher=str(headless_teacher), shards=str(one_batch_shards), steps=2, batch_size=4)
    fit_mlm_head(out=out, **fit)
    (out / "stale.txt").write_text("from the first fit")
    fit_mlm_head(out=out, seed=1, **fit)
    assert not (out / "stale.txt").exists() and json.loads((out / "mlm_head.json").read_text())["seed"] == 1
    assert not list(tmp_path.glob(".*tmp-*"))

    foreign = tmp_path / "runs"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(
        FileExistsError, match=r"--out .*runs: exists and is not an earlier fit-mlm-head output"
    ):
        fit_mlm_head(out=foreign, **fit)
    assert [p.name for p in foreign.iterdir()] == ["precious.txt"]
