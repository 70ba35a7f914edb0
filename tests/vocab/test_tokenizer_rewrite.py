"""The rewritten tokenizer gives exactly the student's ids: ``student(text) == remap(teacher(text))`` on real
text, odd text and sentence pairs, for the embedded WordPiece tokenizer and one trained here; BPE and
Unigram tokenizers (trained here with ``tokenizers``) are refused in one line, never rewritten wrong."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pretrain_distill.core.assets import movie_sentences_path
from pretrain_distill.core.errors import ConfigError
from pretrain_distill.vocab import (
    StudentVocab,
    check_rewritable,
    choose_vocab,
    save_tokenizer,
    write_student_tokenizer,
)
from pretrain_distill.vocab.resolve import always_kept
from pretrain_distill.vocab.tokenizer import rewrite_backend

ODD = [
    "",
    "   ",
    "Ünïcödé naïveté, 北京 and emoji 🙂🙂 — zero-width\u200bjoiner",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "[UNK] [MASK] [CLS] literally written, and [unused5]",
    "x" * 300,
    "numbers 3.14159 2,718 1e-9 and #hashtags @mentions http://example.com/a?b=c",
]


def _sentences(count: int, skip: int = 0) -> list[str]:
    lines = movie_sentences_path().read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t")[-1] for line in lines[skip : skip + count]]


def _vocab_from(tokenizer, texts: list[str], min_count: int) -> StudentVocab:
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for ids in tokenizer(texts)["input_ids"]:
        np.add.at(counts, ids, 1)
    return choose_vocab(counts, always_kept(tokenizer), tokenizer.unk_token_id, min_count, 1.0)


def _assert_rewrite_exact(teacher, vocab: StudentVocab, out, texts: list[str]) -> None:
    teacher.save_pretrained(out / "teacher")
    (out / "student").mkdir()
    write_student_tokenizer(out / "teacher", vocab, out / "student")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student = AutoTokenizer.from_pretrained(out / "student")
    unknown = 0
    for text in texts:
        expected = vocab.remap(teacher(text)["input_ids"])
        assert student(text)["input_ids"] == expected, text
        unknown += expected.count(vocab.student_unk)
    assert unknown > 20  # the texts do hit pruned tokens
    pairs = student(texts[:8], texts[8:16], padding=True, truncation=True, max_length=24)
    reference = teacher(texts[:8], texts[8:16], padding=True, truncation=True, max_length=24)
    assert pairs["input_ids"] == [vocab.remap(ids) for ids in reference["input_ids"]]
    assert pairs["attention_mask"] == reference["attention_mask"]
    assert pairs.get("token_type_ids") == reference.get("token_type_ids")
    assert student.convert_ids_to_tokens(vocab.student_unk) == teacher.unk_token
    for role in ("cls", "sep", "pad", "mask", "unk"):
        assert getattr(student, f"{role}_token_id") == vocab.remap([getattr(teacher, f"{role}_token_id")])[0]


@pytest.mark.integration
def test_the_embedded_wordpiece_tokenizer_is_rewritten_exactly(tokenizer, tmp_path):
    vocab = _vocab_from(tokenizer, _sentences(3000), min_count=3)
    assert 1000 < vocab.size < 6000
    _assert_rewrite_exact(tokenizer, vocab, tmp_path, _sentences(400, skip=5000) + ODD)


def _trained(model, trainer, normalizer, pre_tokenizer, specials: list[str]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(model)
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.train_from_iterator(_sentences(3000), trainer=trainer)
    cls, sep = (backend.token_to_id(t) for t in specials[1:3])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{specials[1]} $A {specials[2]}",
        pair=f"{specials[1]} $A {specials[2]} $B:1 {specials[2]}:1",
        special_tokens=[(specials[1], cls), (specials[2], sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=specials[0],
        cls_token=specials[1],
        sep_token=specials[2],
        unk_token=specials[3],
        mask_token=specials[4],
    )


def test_a_trained_wordpiece_tokenizer_is_rewritten_exactly(tmp_path):
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    teacher = _trained(
        models.WordPiece(unk_token="[UNK]"),
        trainers.WordPieceTrainer(vocab_size=3000, special_tokens=specials),
        normalizers.BertNormalizer(lowercase=True),
        pre_tokenizers.BertPreTokenizer(),
        specials,
    )
    vocab = _vocab_from(teacher, _sentences(400), min_count=2)
    assert vocab.size < 0.8 * len(teacher)
    _assert_rewrite_exact(teacher, vocab, tmp_path, _sentences(300, skip=5000) + ODD)


@pytest.mark.parametrize("kind", ["BPE", "Unigram"])
def test_bpe_and_unigram_tokenizers_are_refused_in_one_line(kind):
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    if kind == "BPE":
        model, trainer = models.BPE(), trainers.BpeTrainer(vocab_size=2000, special_tokens=specials)
        pre = pre_tokenizers.ByteLevel(add_prefix_space=True)
    else:
        model = models.Unigram()
        trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=specials, unk_token="<unk>")
        pre = pre_tokenizers.Metaspace()
    teacher = _trained(model, trainer, normalizers.NFKC(), pre, specials)
    with pytest.raises(ConfigError, match=f"is a {kind} model, which cannot be rewritten") as err:
        check_rewritable(teacher)
    assert "\n" not in str(err.value)
    vocab = _vocab_from(teacher, _sentences(400), min_count=2)
    with pytest.raises(ConfigError):
        rewrite_backend(teacher.backend_tokenizer.to_str(), vocab)


@pytest.mark.integration
def test_re_saving_copies_the_files_because_tokenizers_would_collapse_them(tokenizer, tmp_path):
    """``save_pretrained`` re-serialises through ``tokenizers``, which keeps one string per id: the tokens
    sharing the unknown id are lost and words split differently. ``save_tokenizer`` (fine-tuning, demo)
    copies the files instead."""
    vocab = _vocab_from(tokenizer, _sentences(3000), min_count=3)
    tokenizer.save_pretrained(tmp_path / "teacher")
    (tmp_path / "student").mkdir()
    write_student_tokenizer(tmp_path / "teacher", vocab, tmp_path / "student")
    vocab.save(tmp_path / "student")
    student = AutoTokenizer.from_pretrained(tmp_path / "student")
    save_tokenizer(student, tmp_path / "student", tmp_path / "copied")
    student.save_pretrained(tmp_path / "resaved")
    text = "antidisestablishmentarianism displaying unbelievable sesquipedalian words"
    expected = vocab.remap(tokenizer(text)["input_ids"])
    assert AutoTokenizer.from_pretrained(tmp_path / "copied")(text)["input_ids"] == expected
    assert AutoTokenizer.from_pretrained(tmp_path / "resaved")(text)["input_ids"] != expected
    assert StudentVocab.load(tmp_path / "copied") == vocab
