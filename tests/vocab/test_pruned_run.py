"""A run with ``student.vocab=corpus`` end to end on the engine: the student holds only the kept rows, MLM
labels and masking use them, every checkpoint and the export carry the vocabulary, a resume continues
exactly, the export's tokenizer gives the ids the student was trained on, and bad rules exit 2 with
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from pretrain_distill import cli
from pretrain_distill.data.masking import DynamicMasker
from pretrain_distill.data.token_counts import load_token_counts
from pretrain_distill.engine import train
from pretrain_distill.export import end_of_run
from pretrain_distill.models import build_student
from pretrain_distill.objectives import Distiller
from pretrain_distill.run_config import ObjectiveConfig
from pretrain_distill.vocab import StudentVocab, VocabIndex, cut_student
from tests.launch import subprocess_env, torchrun

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_helpers import (  # noqa: E402
    REPO,
    TRAIN_AND_DUMP_WEIGHTS,
    tiny_config,
    tiny_overrides,
)

PRUNED = (
    "student.vocab=corpus",
    "student.vocab_min_count=2",
    "objective.weights={hs: 1.0, mlm: 1.0}",
    "train.max_steps=4",
    "train.save_every=2",
    "train.keep_last=5",
)


@pytest.fixture(scope="module")
def pruned_shards(movie_shards):
    return movie_shards("pruned", 6000)


@pytest.fixture(scope="module")
def pruned_run(tiny_teacher_dir, pruned_shards, tmp_path_factory):
    shards, _ = pruned_shards
    out = tmp_path_factory.mktemp("pruned") / "run"
    return train(tiny_config(tiny_teacher_dir, shards, out, *PRUNED), on_end=end_of_run)


def test_the_start_up_summary_tells_the_pruned_vocabulary(tiny_teacher_dir, pruned_shards, tmp_path, capsys):
    argv = ["train", *tiny_overrides(tiny_teacher_dir, pruned_shards[0], tmp_path / "run"), *PRUNED]
    assert cli.main([*argv, "train.max_steps=1", "train.export=false"]) == 0
    vocab = StudentVocab.load(tmp_path / "run" / "checkpoints" / "step_00000001" / "student")
    share = 100 * vocab.stats["unknown_share"]
    line = f"vocab      {vocab.size:,} of the teacher's 30,522 tokens kept; {share:.3f}% of the corpus tokens"
    assert line in capsys.readouterr().out


def test_the_run_trains_a_student_of_the_kept_tokens(pruned_run, pruned_shards, tokenizer):
    shards, manifest = pruned_shards
    vocab = StudentVocab.load(pruned_run / "checkpoints" / "step_00000004" / "student")
    (counts,) = load_token_counts(shards, manifest).values()
    expected = sorted({*(counts >= 2).nonzero()[0].tolist(), *tokenizer.all_special_ids})
    assert list(vocab.kept) == expected and vocab.size < 2000
    assert vocab.stats["unknown_share"] == pytest.approx(counts[counts < 2].sum() / counts.sum())
    assert StudentVocab.load(pruned_run / "checkpoints" / "step_00000002" / "student") == vocab
    weights = load_file(pruned_run / "checkpoints" / "step_00000004" / "student" / "model.safetensors")
    assert weights["bert.embeddings.word_embeddings.weight"].shape == (vocab.size, 32)
    assert weights["cls.predictions.bias"].shape == (vocab.size,)


def test_the_export_reads_text_as_the_student_was_trained(pruned_run, tokenizer):
    export = pruned_run / "export"
    vocab = StudentVocab.load(export)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student_tok = AutoTokenizer.from_pretrained(export)
        model = AutoModel.from_pretrained(export)
    texts = ["a gripping, wonderfully acted film", "the zeitgeist of sesquipedalian xylophones", "北京 🙂"]
    batch = student_tok(texts, padding=True, return_tensors="pt")
    for row, text in zip(batch["input_ids"].tolist(), texts):
        assert row[: len(tokenizer(text).input_ids)] == vocab.remap(tokenizer(text).input_ids)
    assert int(batch["input_ids"].max()) < vocab.size == model.config.vocab_size
    assert model(**batch).last_hidden_state.shape[:2] == batch["input_ids"].shape


def test_a_resumed_run_reaches_the_same_weights(pruned_run, tiny_teacher_dir, pruned_shards, tmp_path):
    shards, _ = pruned_shards
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    source = pruned_run / "checkpoints" / "step_00000002"
    import shutil

    shutil.copytree(source, resumed / "checkpoints" / source.name)
    shutil.copytree(pruned_run / "tokenizer", resumed / "tokenizer")
    shutil.copy(pruned_run / "config.yaml", resumed / "config.yaml")
    train(tiny_config(tiny_teacher_dir, shards, resumed, *PRUNED, "train.export=false"))
    final = "checkpoints/step_00000004/student/model.safetensors"
    a, b = load_file(pruned_run / final), load_file(resumed / final)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["student.vocab_coverage=1.5"], "student.vocab_coverage: must be in (0, 1]"),
        (["student.vocab_coverage=0"], "student.vocab_coverage: must be in (0, 1]"),
        (["student.vocab_min_count=1000000"], "fewer than the special tokens"),
    ],
)
def test_bad_rules_exit_2_with_nothing_written(
    extra, message, tiny_teacher_dir, pruned_shards, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", *tiny_overrides(tiny_teacher_dir, pruned_shards[0], out), "student.vocab=corpus", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_sentence_transformers_export_reads_the_student_ids(pruned_run, tokenizer, tmp_path):
    out = tmp_path / "st"
    assert cli.main(["export", str(pruned_run), "--format", "sentence-transformers", "--out", str(out)]) == 0
    vocab = StudentVocab.load(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SentenceTransformer(str(out), device="cpu")
    text = "the zeitgeist of sesquipedalian xylophones"
    assert model.tokenizer(text)["input_ids"] == vocab.remap(tokenizer(text)["input_ids"])
    assert model.encode([text, "a fine film"]).shape == (2, 32)


def test_od_and_mlm_compare_against_the_kept_tokens(tiny_teacher_dir, tokenizer):
    """The Distiller's od / mlm terms with a pruned vocabulary, against a reference written out here."""
    torch.manual_seed(0)
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher_dir).eval()
    reference_teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher_dir).eval()
    texts = ["a gripping and wonderfully acted film", "the plot drags but the cast is superb"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    kept = sorted({*tokenizer.all_special_ids, *batch["input_ids"][0].tolist(), *range(2000, 2100)})
    vocab = StudentVocab(tuple(kept), len(tokenizer), tokenizer.unk_token_id)  # row 2 has unkept tokens
    student = cut_student(build_student([1, 4, 64, 128], teacher.config), vocab).eval()
    distiller = Distiller(ObjectiveConfig(weights={"od": 1.0, "mlm": 1.0}), student, teacher, vocab).eval()
    masker = DynamicMasker(tokenizer, probability=0.5, replacement_ids=kept)
    ids, labels = masker(batch["input_ids"], batch["attention_mask"], torch.Generator().manual_seed(1))
    with torch.no_grad():
        losses = distiller(ids, batch["attention_mask"], labels)
        index = VocabIndex(vocab)
        at = labels != -100
        z_t = reference_teacher(input_ids=ids, attention_mask=batch["attention_mask"]).logits[at][:, kept]
        z_s = student(input_ids=index.student_ids(ids), attention_mask=batch["attention_mask"]).logits[at]
    p_t = z_t.softmax(-1)
    od = (p_t * (p_t.log() - z_s.log_softmax(-1))).sum(-1).mean()
    mlm = torch.nn.functional.cross_entropy(z_s, index.student_labels(labels)[at])
    assert at.sum() > 4 and torch.allclose(losses["od"], od, atol=1e-5)
    assert torch.allclose(losses["mlm"], mlm, atol=1e-5)


@pytest.mark.slow
def test_two_ranks_with_loader_workers_train_the_same_pruned_student(
    tiny_teacher_dir, pruned_shards, tmp_path
):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_teacher_dir, pruned_shards[0], out, *PRUNED, "data.num_workers=1")
    script = tmp_path / "child.py"
    script.write_text(TRAIN_AND_DUMP_WEIGHTS)
    cmd = torchrun(str(script), json.dumps(overrides))
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    vocab = StudentVocab.load(out / "checkpoints" / "step_00000004" / "student")
    assert rank0["bert.embeddings.word_embeddings.weight"].shape[0] == vocab.size < 2000
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], msg=name)
