"""Task loaders on fixtures in the official layouts: label maps, pairs, splits, bad input."""

from __future__ import annotations

import json

import pytest

from finetune.finetune_config import ConfigError, CustomTaskConfig, EvalSetConfig, FinetuneConfig
from finetune.tasks import GLUE_TASKS, TASKS, XNLI_LANGUAGES, get_task, load_eval_set, load_task_data


def _triples(ds):
    b = ds["text_b"] if "text_b" in ds.column_names else [None] * len(ds)
    return list(zip(ds["text_a"], b, ds["label"]))


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_local_layout(glue_dir, task):
    root, expected = glue_dir
    data = load_task_data(FinetuneConfig(task=task, data_dir=str(root)))
    assert data.spec is TASKS[task]
    assert _triples(data.train) == [(a, b, lab) for a, b, lab in expected[task]["train"]]
    splits = ("dev_matched", "dev_mismatched") if task == "mnli" else ("dev",)
    assert list(data.evals) == list(splits)
    for split in splits:
        assert _triples(data.evals[split]) == expected[task][split]
    assert ("text_b" in data.train.column_names) == TASKS[task].pair


def test_label_ids_follow_hf_glue():
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("qnli").labels[0] == "entailment" and get_task("wnli").labels[1] == "entailment"
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1


def test_xnli_per_language(glue_dir):
    root, expected = glue_dir
    data = load_task_data(FinetuneConfig(task="xnli", data_dir=str(root)))
    assert len(data.train) == 12  # English MNLI train
    assert list(data.evals) == [f"{s}.{lang}" for s in ("dev", "test") for lang in XNLI_LANGUAGES]
    for split in ("dev", "test"):
        for lang in XNLI_LANGUAGES:
            ds = data.evals[f"{split}.{lang}"]
            assert ds["label"] == expected["xnli"][split][lang]
            assert all(t.startswith(f"{lang} premise") for t in ds["text_a"])
            assert all(t.startswith(f"{lang} hypothesis") for t in ds["text_b"])


def test_xnli_english_training_set(tmp_path, glue_dir):
    root, _ = glue_dir
    mt = tmp_path / "XNLI-MT-1.0" / "multinli"
    mt.mkdir(parents=True)
    (mt / "multinli.train.en.tsv").write_text(
        "premise\thypo\tlabel\np one\th one\tcontradictory\np two\th two\tneutral\n"
    )
    (tmp_path / "XNLI-1.0").symlink_to(root / "XNLI-1.0")
    data = load_task_data(FinetuneConfig(task="xnli", data_dir=str(tmp_path), xnli_train="xnli_en"))
    assert data.train["label"] == [2, 1] and data.train["text_b"] == ["h one", "h two"]


def test_custom_tsv_csv_jsonl(tmp_path):
    (tmp_path / "train.csv").write_text('text,other,y\n"hello, world",x,pos\nbad day,x,neg\nfine,x,pos\n')
    (tmp_path / "dev.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "y": y}) for t, y in [("ok", "neg"), ("yes", "pos")])
    )
    custom = CustomTaskConfig(
        name="mine",
        train_file="train.csv",
        eval_files={"dev": "dev.jsonl"},
        text_column="text",
        label_column="y",
    )
    data = load_task_data(FinetuneConfig(task="custom", custom=custom, data_dir=str(tmp_path)))
    assert data.spec.labels == ("neg", "pos") and data.spec.metrics == ("accuracy",)
    assert data.train["text_a"] == ["hello, world", "bad day", "fine"] and data.train["label"] == [1, 0, 1]
    assert data.evals["dev"]["label"] == [0, 1]

    (tmp_path / "pairs.tsv").write_text("a\tb\t0.5\nc\td\t4\ne\tf\t2\n")
    reg = CustomTaskConfig(
        name="sim",
        train_file=str(tmp_path / "pairs.tsv"),
        header=False,
        columns=["s1", "s2", "score"],
        text_column="s1",
        text_pair_column="s2",
        label_column="score",
        task_type="regression",
        dev_fraction=0.34,
    )
    data = load_task_data(FinetuneConfig(task="custom", custom=reg))
    assert data.spec.is_regression and data.spec.metrics == ("pearson", "spearman") and data.spec.pair
    assert len(data.train) == 2 and len(data.evals["dev"]) == 1
    assert sorted(list(data.train["label"]) + list(data.evals["dev"]["label"])) == [0.5, 2.0, 4.0]


def test_bad_input_raises(tmp_path, glue_dir):
    root, _ = glue_dir
    with pytest.raises(ConfigError, match="unknown task 'sst3'"):
        load_task_data(FinetuneConfig(task="sst3", data_dir=str(root)))
    with pytest.raises(FileNotFoundError, match="SST-2/train.tsv"):
        load_task_data(FinetuneConfig(task="sst2", data_dir=str(tmp_path)))
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nnice\tpositive\nmeh\tmaybe\n")
    wrong_col = CustomTaskConfig(
        train_file=str(tmp_path / "t.tsv"), text_column="text", labels=["negative", "positive"]
    )
    with pytest.raises(ConfigError, match="no column 'text'; columns are \\['sentence', 'label'\\]"):
        load_task_data(FinetuneConfig(task="custom", custom=wrong_col))
    bad_label = CustomTaskConfig(
        train_file=str(tmp_path / "t.tsv"), labels=["negative", "positive"], dev_fraction=0.5
    )
    with pytest.raises(ValueError, match="label 'maybe' is not in the label map"):
        load_task_data(FinetuneConfig(task="custom", custom=bad_label))
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t7\n")
    with pytest.raises(ValueError, match="train.tsv:2: label '7'"):
        load_task_data(FinetuneConfig(task="sst2", data_dir=str(tmp_path)))


def test_ood_eval_set_label_map(tmp_path):
    (tmp_path / "scitail.tsv").write_text("p1\th1\tentails\np2\th2\tneutral\n")
    ood = EvalSetConfig(
        name="scitail",
        file="scitail.tsv",
        header=False,
        columns=["premise", "hypothesis", "label"],
        text_column="premise",
        text_pair_column="hypothesis",
        label_map={"entails": "entailment", "neutral": "neutral"},
        prediction_map={"contradiction": "neutral"},
    )
    ds = load_eval_set(ood, get_task("mnli"), str(tmp_path))
    assert ds["label"] == [0, 1] and ds["text_b"] == ["h1", "h2"]
    with pytest.raises(ConfigError, match="'entailment' is not a sst2 label"):
        load_eval_set(ood, get_task("sst2"), str(tmp_path))


@pytest.mark.integration
def test_movies_builtin_task():
    data = load_task_data(FinetuneConfig(task="movies"))
    n_train, n_dev = len(data.train), len(data.evals["dev"])
    assert n_train + n_dev == 10605 - 37  # score-0 rows dropped
    assert abs(n_dev - 0.1 * (n_train + n_dev)) <= 1
    assert set(data.train["label"]) == {0, 1}
    assert sum(data.train["label"]) + sum(data.evals["dev"]["label"]) == 5242  # positive sentences
