"""Fixtures for the fine-tuning stage: GLUE / XNLI files in the official layouts, tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib (no sys.path changes): make task_metrics importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = "the a movie film great awful plot actor fun dull story scene long short good bad".split()
NLI = ("entailment", "neutral", "contradiction")


def sentence(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)) + f" {i}."


def write_tsv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_glue(root: Path, n: int = 12) -> dict:
    """Every GLUE task's train/dev files in the official layout; returns the expected (text_a, text_b,
    label) triples per task and split (label as the HF glue id, or the float score)."""
    expected: dict = {}

    def put(task, split, triples):
        expected.setdefault(task, {})[split] = triples

    for split in ("train", "dev"):
        off = 0 if split == "train" else 1000
        cola = [[f"gj0{i}", i % 2, "*" if i % 2 == 0 else "", sentence(off + i)] for i in range(n)]
        write_tsv(root / "CoLA" / f"{split}.tsv", None, cola)
        put("cola", split, [(r[3], None, r[1]) for r in cola])

        sst = [[sentence(off + i), i % 2] for i in range(n)]
        write_tsv(root / "SST-2" / f"{split}.tsv", ["sentence", "label"], sst)
        put("sst2", split, [(r[0], None, r[1]) for r in sst])

        mrpc = [[i % 2, 100 + i, 200 + i, sentence(off + i), sentence(off + i + 50)] for i in range(n)]
        write_tsv(
            root / "MRPC" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], mrpc
        )
        put("mrpc", split, [(r[3], r[4], r[0]) for r in mrpc])

        sts_header = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
        sts = [
            [i, "main-news", "f", "2012", i, "s1", "s2", sentence(off + i), sentence(off + i + 9), i * 5 / n]
            for i in range(n)
        ]
        write_tsv(root / "STS-B" / f"{split}.tsv", sts_header, sts)
        put("stsb", split, [(r[7], r[8], float(r[9])) for r in sts])

        qqp = [
            [i, 2 * i, 2 * i + 1, sentence(off + i) + "?", sentence(off + i + 3) + "?", (i // 2) % 2]
            for i in range(n)
        ]
        write_tsv(root / "QQP" / f"{split}.tsv", "id qid1 qid2 question1 question2 is_duplicate".split(), qqp)
        put("qqp", split, [(r[3], r[4], r[5]) for r in qqp])

        for name, task, labels in (
            ("QNLI", "qnli", ("entailment", "not_entailment")),
            ("RTE", "rte", ("entailment", "not_entailment")),
            ("WNLI", "wnli", (0, 1)),
        ):
            cols = (
                ["index", "question", "sentence", "label"]
                if task == "qnli"
                else ["index", "sentence1", "sentence2", "label"]
            )
            rows = [[i, sentence(off + i), sentence(off + i + 4), labels[i % 2]] for i in range(n)]
            write_tsv(root / name / f"{split}.tsv", cols, rows)
            put(task, split, [(r[1], r[2], i % 2) for i, r in enumerate(rows)])

    mnli_base = "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse sentence1 sentence2".split()
    for split, labels_cols, off in (
        ("train", ["label1"], 0),
        ("dev_matched", ["label1", "label2", "label3", "label4", "label5"], 1000),
        ("dev_mismatched", ["label1", "label2", "label3", "label4", "label5"], 2000),
    ):
        rows = []
        for i in range(n):
            s1, s2, gold = sentence(off + i), sentence(off + i + 2), NLI[i % 3]
            rows.append(
                [i, i, f"{i}e", "fiction", f"( {s1} )", f"( {s2} )", f"(ROOT {s1})", f"(ROOT {s2})", s1, s2]
                + [gold] * len(labels_cols)
                + [gold]
            )
        write_tsv(root / "MNLI" / f"{split}.tsv", mnli_base + labels_cols + ["gold_label"], rows)
        put("mnli", split, [(r[8], r[9], i % 3) for i, r in enumerate(rows)])
    return expected


XNLI_LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
XNLI_HEADER = (
    "language gold_label sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse "
    "sentence1 sentence2 promptID pairID genre label1 label2 label3 label4 label5"
).split()


def write_xnli(root: Path, per_lang: int = 3) -> dict:
    """XNLI-1.0/xnli.{dev,test}.tsv; returns {split: {lang: [label ids]}}."""
    expected: dict = {}
    for split in ("dev", "test"):
        rows = []
        for li, lang in enumerate(XNLI_LANGS):
            for i in range(per_lang):
                gold = NLI[(li + i) % 3]
                s1, s2 = f"{lang} premise {i}", f"{lang} hypothesis {i}"
                rows.append(
                    [
                        lang,
                        gold,
                        f"( {s1} )",
                        f"( {s2} )",
                        f"(ROOT {s1})",
                        f"(ROOT {s2})",
                        s1,
                        s2,
                        i,
                        f"{i}n",
                        "facetoface",
                    ]
                    + [gold] * 5
                )
                expected.setdefault(split, {}).setdefault(lang, []).append((li + i) % 3)
        write_tsv(root / "XNLI-1.0" / f"xnli.{split}.tsv", XNLI_HEADER, rows)
    return expected


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue_data")
    expected = write_glue(root)
    expected["xnli"] = write_xnli(root)
    return root, expected


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tokenizer):
    """An encoder-only BertModel (2 layers, 64 wide, real vocab): like an exported student."""
    return _save(tiny_classifier(2, 64, head=False), tokenizer, tmp_path_factory.mktemp("tiny_encoder"))


def tiny_classifier(
    layers: int,
    hidden: int,
    num_labels: int = 2,
    seed: int = 0,
    vocab_size: int = 30522,
    model_type: str = "bert",
    head: bool = True,
):
    """A tiny random ``*ForSequenceClassification`` (or, ``head=False``, the bare encoder)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    return (AutoModelForSequenceClassification if head else AutoModel).from_config(config)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """A 4-layer, 64-wide 'fine-tuned' binary teacher classifier."""
    return _save(tiny_classifier(4, 64, seed=1), tokenizer, tmp_path_factory.mktemp("tiny_teacher"))
