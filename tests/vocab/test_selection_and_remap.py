"""The pruned vocabulary: the keep rule on hand-computed counts, bad rules refused, the device remap, OD's
restricted distribution, masking's replacements, and the cut student equal to the full one on kept ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.data.masking import DynamicMasker
from pretrain_distill.data.prepare import prepare_shards
from pretrain_distill.data.token_counts import load_token_counts
from pretrain_distill.models import build_student
from pretrain_distill.run_config import DataConfig, StudentConfig
from pretrain_distill.vocab import StudentVocab, VocabIndex, choose_vocab, cut_student, select_kept
from pretrain_distill.vocab.resolve import always_kept, corpus_vocab
from pretrain_distill.vocab.selection import sampled_counts

#: tests/models/conftest.py: the tiny config of every supported family.
_SPEC = importlib.util.spec_from_file_location(
    "models_conftest", Path(__file__).parents[1] / "models" / "conftest.py"
)
MODELS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(MODELS)

# ids:               0  1  2   3  4  5  6
COUNTS = np.array([5, 0, 3, 10, 1, 0, 7])  # sum 26; the special token 0 covers 5


@pytest.mark.parametrize(
    ("min_count", "coverage", "kept"),
    [
        (1, 1.0, [0, 2, 3, 4, 6]),  # every token that occurs
        (3, 1.0, [0, 2, 3, 6]),
        (8, 1.0, [0, 3]),
        (1, 0.5, [0, 3]),  # 5 + 10 >= 13
        (1, 0.8, [0, 3, 6]),  # 5 + 10 = 15 < 20.8 <= 22
        (1, 0.96, [0, 2, 3, 6]),  # 25 >= 24.96
    ],
)
def test_the_rule_on_hand_computed_counts(min_count, coverage, kept):
    assert select_kept(COUNTS, [0], min_count, coverage).tolist() == kept


@pytest.mark.parametrize(("min_count", "coverage"), [(11, 1.0), (1, 0.1)])  # nothing / the special alone
def test_a_rule_keeping_fewer_tokens_than_the_special_tokens_is_refused(min_count, coverage):
    with pytest.raises(ConfigError, match="fewer than the special tokens"):
        select_kept(COUNTS, [0], min_count, coverage)


def test_the_vocabulary_records_its_unknown_share_and_round_trips(tmp_path):
    vocab = choose_vocab(COUNTS, [0, 1], unk_id=1, min_count=1, coverage=0.8, rule={"min_count": 1})
    assert vocab.kept == (0, 1, 3, 6) and vocab.size == 4 and vocab.student_unk == 1
    assert vocab.stats["unknown_share"] == pytest.approx(4 / 26)  # ids 2 and 4 (3 + 1 tokens) dropped
    assert vocab.lookup().tolist() == [0, 1, 1, 2, 1, 1, 3]
    assert vocab.remap([6, 2, 3, 0]) == [3, 1, 2, 0]
    vocab.save(tmp_path)
    assert StudentVocab.load(tmp_path) == vocab and StudentVocab.load(tmp_path / "none") is None


@pytest.mark.parametrize("coverage", [0.0, -0.5, 1.5])
def test_a_coverage_outside_0_1_is_refused(coverage):
    with pytest.raises(ConfigError, match=r"vocab_coverage: must be in \(0, 1\]"):
        select_kept(COUNTS, [0], 1, coverage)


def test_a_tokenizer_without_an_unknown_token_is_refused():
    with pytest.raises(ConfigError, match="has none"):
        choose_vocab(COUNTS, [0, 1], unk_id=None, min_count=1, coverage=1.0)


def test_languages_are_counted_as_often_as_the_run_samples_them():
    counts = {"de": np.array([2, 0, 4]), "ru": np.array([0, 6, 0])}
    plain = sampled_counts(counts, {"de": 30, "ru": 10}, 1.0)
    assert plain.dtype.kind == "i" and plain.tolist() == [2, 6, 4]
    # alpha = 0: 20 sequences of each language per epoch: de read 20/30 of the time, ru twice
    assert sampled_counts(counts, {"de": 30, "ru": 10}, 0.0) == pytest.approx([4 / 3, 12, 8 / 3])


def test_the_device_remap_and_ods_restricted_distribution():
    index = VocabIndex(choose_vocab(COUNTS, [0, 1], unk_id=1, min_count=1, coverage=0.8))
    ids = torch.tensor([[0, 3, 2, 6], [4, 5, 3, 1]])
    assert index.student_ids(ids).tolist() == [[0, 2, 1, 3], [1, 1, 2, 1]]
    labels = torch.tensor([[-100, 6, 2, -100]])
    assert index.student_labels(labels).tolist() == [[-100, 3, 1, -100]]
    logits = torch.randn(5, 7)
    restricted = index.restrict(logits).softmax(-1)
    full = logits.softmax(-1)[:, [0, 1, 3, 6]]
    assert torch.allclose(restricted, full / full.sum(-1, keepdim=True), atol=1e-6)


def test_masking_replaces_only_with_kept_tokens(tokenizer):
    kept = [0, 100, 101, 102, 103, *range(2000, 2050)]
    masker = DynamicMasker(tokenizer, probability=0.5, replacement_ids=kept)
    ids = torch.randint(1000, 30000, (64, 64))
    masked, labels = masker(ids, torch.ones_like(ids), torch.Generator().manual_seed(0))
    replaced = masked[(masked != ids) & (masked != tokenizer.mask_token_id)]
    assert len(replaced) > 100 and set(replaced.tolist()) <= set(range(2000, 2050))
    assert len(set(replaced.tolist())) > 40  # drawn over the whole kept set


@pytest.mark.parametrize("model_type", MODELS.MODEL_TYPES)
def test_a_cut_student_equals_the_full_one_on_kept_tokens(model_type):
    """Every family: the cut student on remapped ids gives the full one's logits at the kept tokens."""
    vocab_size = 101
    config = MODELS.tiny_family_config(model_type, vocab_size=vocab_size, layers=1)
    torch.manual_seed(0)
    full = AutoModelForMaskedLM.from_config(config).eval()
    kept = tuple([0, 1, 2, 3, *range(10, vocab_size, 3)])
    vocab = StudentVocab(kept, vocab_size, teacher_unk=3)
    cut = cut_student(_copy(full), vocab).eval()
    assert cut.config.vocab_size == len(kept) and cut.get_input_embeddings().weight.shape[0] == len(kept)
    ids = torch.tensor([list(kept[4:20]), list(kept[19:35])])
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    ids[1, 10:] = config.pad_token_id
    student_ids = VocabIndex(vocab).student_ids(ids)
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask).logits[..., list(kept)]
        got = cut(input_ids=student_ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5)

    def tied(model) -> bool:
        return (
            model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        )

    assert tied(cut) == tied(full)  # tied weights stay tied (EuroBERT's are not)


def _copy(model):
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


def test_a_vocabulary_that_moves_the_padding_token_is_refused():
    config = AutoConfig.for_model(
        "roberta", vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, pad_token_id=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="moves the padding token"):
        cut_student(AutoModelForMaskedLM.from_config(config), StudentVocab((1, 3, 5), 50, teacher_unk=3))


def test_init_teacher_keeps_the_teachers_rows_of_the_kept_tokens(tiny_teacher_dir):
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():
        teacher.cls.predictions.bias.normal_()  # a head bias that is not all zeros
    vocab = StudentVocab((0, 100, 101, 102, 103, 2000, 2001, 29999), 30522, teacher_unk=100)
    student = cut_student(
        build_student([1, 4, 64, 128], teacher.config, init="teacher", teacher=teacher), vocab
    )
    rows = list(vocab.kept)
    t_emb = teacher.get_input_embeddings().weight[rows]
    assert torch.equal(student.get_input_embeddings().weight, t_emb)
    assert torch.equal(student.get_output_embeddings().bias, teacher.get_output_embeddings().bias[rows])
    assert torch.equal(student.cls.predictions.bias, teacher.cls.predictions.bias[rows])
    assert student.config.pad_token_id == 0 and student.config.vocab_size == 8


def test_multilingual_shards_count_each_language_as_often_as_the_run_reads_it(tokenizer, tmp_path):
    """Real prepared shards in two languages: with alpha = 1 the plain counts; with alpha = 0 the smaller
    language is read more often, so its rare tokens pass a min_count that they miss at alpha = 1."""
    german = ["Der Hund läuft schnell über die grüne Wiese nach Hause."] * 3
    english = [f"the dog runs home across the green meadow number {i}" for i in range(40)]
    sources = []
    for language, lines in (("de", german), ("en", english)):
        path = tmp_path / f"{language}.txt"
        path.write_text("\n".join(lines) + "\n")
        sources.append(f"text:{path}#doc=line,language={language}")
    shards = tmp_path / "shards"
    manifest = prepare_shards(sources, shards, tokenizer=tokenizer, max_length=16, workers=1, progress=False)
    counts = load_token_counts(shards, manifest)
    assert set(counts) == {"de", "en"}
    student = StudentConfig(vocab="corpus", vocab_min_count=4)
    plain = corpus_vocab(student, DataConfig(shards=str(shards), language_alpha=1.0), tokenizer, manifest)
    flat = corpus_vocab(student, DataConfig(shards=str(shards), language_alpha=0.0), tokenizer, manifest)
    german_only = [i for i in np.flatnonzero(counts["de"] == 3) if counts["en"][i] == 0]
    assert len(german_only) > 5
    assert not set(german_only) & set(plain.kept) and set(german_only) <= set(flat.kept)
    total = counts["de"] + counts["en"]
    assert list(plain.kept) == sorted({*np.flatnonzero(total >= 4).tolist(), *always_kept(tokenizer)})
    assert plain.rule["languages"] == ["de", "en"] and flat.rule["language_alpha"] == 0.0
