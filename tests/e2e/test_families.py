"""Every encoder family end to end, as a user runs it: a tiny random teacher of the family saved to disk with
the project's tokenizer -> `pretrain-distill train` (HS uniform + MiniLMv2 + DirectMiniLM, + OD where the
teacher has a trained MLM head) -> the end-of-run export and a sentence-transformers export, both loading
cleanly -> `finetune train` one epoch on a toy task. Plus the cross-family run (BERT teacher -> ModernBERT
student) and the OD refusal for teachers without a trained MLM head (ELECTRA discriminator, DeBERTa-v3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM

from finetune import cli as finetune_cli
from pretrain_distill import cli
from tests.models.conftest import tiny_family_config

#: One model type per family entry (CamemBERT for RoBERTa / XLM-R / CamemBERT).
FAMILY_RUNS = [
    "bert",
    "camembert",
    "xlm-roberta-xl",
    "electra",
    "distilbert",
    "modernbert",
    "deberta-v2",
    "eurobert",
    "mpnet",
]
#: Saved without an MLM head, as their hub checkpoints are: an ELECTRA discriminator, DeBERTa-v3.
HEADLESS = ("electra", "deberta-v2")


@pytest.fixture(scope="module")
def shards(movie_shards) -> Path:
    return movie_shards("family_shards", 3000)[0]


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> dict[str, Path]:
    """A custom CSV task: 8 training and 4 dev sentences, label = positive word or not."""
    root = tmp_path_factory.mktemp("toy_task")
    for split, n in (("train", 8), ("dev", 4)):
        rows = [f"{'a great' if i % 2 else 'an awful'} film number {i},{i % 2}" for i in range(n)]
        (root / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return {"train": root / "train.csv", "dev": root / "dev.csv"}


def save_teacher(model_type: str, tokenizer, path: Path, with_head: bool) -> Path:
    """A tiny 3-layer random teacher of ``model_type`` + the project's tokenizer, as a hub download would be."""
    torch.manual_seed(0)
    ids = {
        k: getattr(tokenizer, k) for k in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
    }
    ids.update(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    config = tiny_family_config(
        model_type, vocab_size=len(tokenizer), hidden=32, heads=4, ffn=64, token_ids=ids
    )
    (AutoModelForMaskedLM if with_head else AutoModel).from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_argv(teacher: Path, shards: Path, run: Path, weights: str, family: str = "") -> list[str]:
    return [
        "train",
        f"teacher.path={teacher}",
        "student.preset=null",
        "student.layers=2",
        "student.heads=2",
        "student.hidden=32",
        "student.ffn=48",
        f"student.family={family}",
        f"objective.weights={weights}",
        "objective.mapping=uniform",
        "objective.teacher_layer=L_T",  # ModernBERT's teacher: layers global, sliding, global
        "objective.relation_heads=2",
        f"data.shards={shards}",
        "data.num_workers=0",
        "data.shuffle_buffer=64",
        f"train.output_dir={run}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.micro_batch_size=4",
        "train.max_steps=2",
        "train.save_every=2",
        "train.log_every=1",
        "train.eval_every=0",
    ]


def assert_clean_load(path: Path, model_type: str) -> None:
    """``AutoModel`` finds every weight it needs in ``path`` and nothing else, and runs."""
    model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched key
    assert model.config.model_type == model_type
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([[101, 2023, 3185, 102]]),
            attention_mask=torch.ones(1, 4, dtype=torch.long),
        )
    assert out.last_hidden_state.shape == (1, 4, 32) and torch.isfinite(out.last_hidden_state).all()


def check_exports(run: Path, model_type: str, head_trained: bool, tmp_path: Path) -> Path:
    """The end-of-run export (the *ForMaskedLM when OD trained its head), then the base encoder in both
    formats, loading in AutoModel with nothing missing or left over; returns the base export."""
    auto = AutoModelForMaskedLM if head_trained else AutoModel
    _, info = auto.from_pretrained(run / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert all(".pooler." in k for k in info["unexpected_keys"]), info  # the base's identity pooler
    base, sentence = tmp_path / "base", tmp_path / "st"
    assert cli.main(["export", str(run), "--without-mlm-head", "--out", str(base)]) == 0
    assert cli.main(["export", str(run), "--format", "sentence-transformers", "--out", str(sentence)]) == 0
    for path in (base, sentence):
        assert_clean_load(path, model_type)
    assert json.loads((sentence / "modules.json").read_text())[1]["type"].endswith(".Pooling")
    return base


def finetune_one_epoch(model: Path, task: dict[str, Path], out: Path) -> dict:
    argv = [
        "train",
        "--model",
        str(model),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--max-length",
        "16",
        "--no-progress",
        "task=custom",
        "custom.name=toy",
        f"custom.train_file={task['train']}",
        f"custom.eval_files={{dev: {task['dev']}}}",
        "custom.text_column=text",
        f"output_dir={out}",
        "batch_size=4",
        "lr=1e-3",
        "device=cpu",
        "num_workers=0",
        "save_model=false",
    ]
    assert finetune_cli.main(argv) == 0
    (metrics,) = out.rglob("metrics.json")
    return json.loads(metrics.read_text())


@pytest.mark.parametrize("model_type", FAMILY_RUNS)
def test_family_distils_exports_and_finetunes(model_type, tokenizer, shards, toy_task, tmp_path, capsys):
    head = model_type not in HEADLESS
    teacher = save_teacher(model_type, tokenizer, tmp_path / "teacher", with_head=head)
    weights = "{hs: 1.0, minilmv2: 1.0, direct_minilm: 1.0" + (", od: 1.0}" if head else "}")
    if not head:  # OD is refused in one line naming the command that fits a head
        assert cli.main(train_argv(teacher, shards, tmp_path / "od", "{od: 1.0}")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "fit-mlm-head" in err and "no trained MLM head" in err
    run = tmp_path / "run"
    assert cli.main(train_argv(teacher, shards, run, weights)) == 0
    losses = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    terms = {k for record in losses for k in record if k.startswith("loss_")}
    assert {"loss_hs", "loss_minilmv2", "loss_direct_minilm"} <= terms and ("loss_od" in terms) == head
    assert all(v == v for r in losses for k, v in r.items() if k.startswith("loss"))  # no NaN

    base = check_exports(run, model_type, head, tmp_path)
    metrics = finetune_one_epoch(base, toy_task, tmp_path / "ft")
    assert 0.0 <= metrics["eval"]["dev"]["accuracy"] <= 1.0


def test_bert_teacher_distils_a_modernbert_student(tokenizer, shards, toy_task, tmp_path):
    """Cross-family: a ModernBERT-shaped student of a BERT teacher, sharing its tokenizer."""
    teacher = save_teacher("bert", tokenizer, tmp_path / "teacher", with_head=True)
    run = tmp_path / "run"
    weights = "{hs: 1.0, minilmv2: 1.0, direct_minilm: 1.0, od: 1.0}"
    assert cli.main(train_argv(teacher, shards, run, weights, family="modernbert")) == 0
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["vocab_size"] == len(tokenizer)
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"]) == (0, 101, 102)
    assert config["layer_types"] == [
        "sliding_attention",
        "full_attention",
    ]  # the layer MiniLMv2 reads is global
    base = check_exports(run, "modernbert", True, tmp_path)
    metrics = finetune_one_epoch(base, toy_task, tmp_path / "ft")
    assert 0.0 <= metrics["eval"]["dev"]["accuracy"] <= 1.0
