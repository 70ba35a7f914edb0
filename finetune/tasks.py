"""Tasks and their data: GLUE, XNLI, the embedded movie sentences, custom tables, out-of-domain sets.

Every loader returns :class:`TaskData`: a training ``datasets.Dataset`` and named evaluation datasets,
all with the columns ``text_a``, ``text_b`` (pairs only) and ``label`` (class id, or float for
regression). Label ids follow the Hugging Face ``glue`` / ``xnli`` configs, so local files in the
official layouts and hub data give the same ids.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from finetune.finetune_config import (
    ConfigError,
    CustomTaskConfig,
    EvalSetConfig,
    FinetuneConfig,
    FinetuneInputError,
    TableConfig,
)
from finetune.metrics import METRIC_NAMES
from pretrain_distill.core.assets import movie_sentences_path

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
NLI_LABELS = ("entailment", "neutral", "contradiction")
LABEL_ALIASES = {"contradictory": "contradiction"}  # XNLI-MT English training file
NO_GOLD_LABEL = "-"  # NLI rows without annotator consensus: dropped


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: label names (empty = regression), metrics, paper epochs, evaluation splits."""

    name: str
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    pair: bool
    eval_splits: tuple[str, ...] = ("dev",)
    epochs: float = 3.0
    selection: str = ""  # the split that picks the best epoch; empty = the first evaluation split

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def selection_split(self) -> str:
        """The evaluation split whose score picks the best epoch (XNLI: English dev, zero-shot)."""
        return self.selection or self.eval_splits[0]


@dataclass(frozen=True)
class GlueLayout:
    """Where a GLUE task lives in the official directory layout and in the HF ``glue`` config."""

    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    hf_text_columns: tuple[str, ...]
    header_names: tuple[str, ...] = ()  # for the header-less CoLA files
    files: tuple[tuple[str, str], ...] = (("train", "train.tsv"), ("dev", "dev.tsv"))
    hf_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"))


BINARY = ("accuracy",)
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", ("unacceptable", "acceptable"), ("mcc",), False, epochs=6.0),
    "sst2": TaskSpec("sst2", ("negative", "positive"), BINARY, False),
    "mrpc": TaskSpec("mrpc", ("not_equivalent", "equivalent"), ("f1", "accuracy"), True),
    "stsb": TaskSpec("stsb", (), ("pearson", "spearman"), True),
    "qqp": TaskSpec("qqp", ("not_duplicate", "duplicate"), ("f1", "accuracy"), True),
    "mnli": TaskSpec("mnli", NLI_LABELS, BINARY, True, ("dev_matched", "dev_mismatched")),
    "qnli": TaskSpec("qnli", ("entailment", "not_entailment"), BINARY, True),
    "rte": TaskSpec("rte", ("entailment", "not_entailment"), BINARY, True),
    "wnli": TaskSpec("wnli", ("not_entailment", "entailment"), BINARY, True),
    "xnli": TaskSpec(
        "xnli",
        NLI_LABELS,
        BINARY,
        True,
        tuple(f"{split}.{lang}" for split in ("dev", "test") for lang in XNLI_LANGUAGES),
        epochs=5.0,
        selection="dev.en",
    ),
    "movies": TaskSpec("movies", ("negative", "positive"), BINARY, False),
}
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")

_S12 = ("sentence1", "sentence2")
GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout(
        "CoLA", ("sentence",), "label", ("sentence",), ("source", "label", "original_mark", "sentence")
    ),
    "sst2": GlueLayout("SST-2", ("sentence",), "label", ("sentence",)),
    "mrpc": GlueLayout("MRPC", ("#1 String", "#2 String"), "Quality", _S12),
    "stsb": GlueLayout("STS-B", _S12, "score", _S12),
    "qqp": GlueLayout("QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2")),
    "mnli": GlueLayout(
        "MNLI",
        _S12,
        "gold_label",
        ("premise", "hypothesis"),
        files=(
            ("train", "train.tsv"),
            ("dev_matched", "dev_matched.tsv"),
            ("dev_mismatched", "dev_mismatched.tsv"),
        ),
        hf_splits=(
            ("train", "train"),
            ("dev_matched", "validation_matched"),
            ("dev_mismatched", "validation_mismatched"),
        ),
    ),
    "qnli": GlueLayout("QNLI", ("question", "sentence"), "label", ("question", "sentence")),
    "rte": GlueLayout("RTE", _S12, "label", _S12),
    "wnli": GlueLayout("WNLI", _S12, "label", _S12),
}


@dataclass
class TaskData:
    """A task's training set and its evaluation sets (split name -> dataset), in ``spec`` order."""

    spec: TaskSpec
    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]


def get_task(name: str) -> TaskSpec:
    """The built-in task ``name`` (Hugging Face ``glue`` config names, ``xnli``, ``movies``)."""
    if name not in TASKS:
        raise ConfigError(
            f"unknown task {name!r}; known: {', '.join(TASKS)} (or task: custom with a custom: section)"
        )
    return TASKS[name]


def custom_task_spec(cfg: CustomTaskConfig, labels: Sequence[str]) -> TaskSpec:
    """The :class:`TaskSpec` of a custom task whose label names are ``labels``."""
    regression = cfg.task_type == "regression"
    metrics = tuple(cfg.metrics) or (("pearson", "spearman") if regression else ("accuracy",))
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad:
        raise ConfigError(f"custom.metrics: unknown metric {bad[0]!r}; known: {', '.join(METRIC_NAMES)}")
    if "f1" in metrics and len(labels) != 2:
        raise ConfigError(f"custom.metrics: f1 needs a binary task, this one has {len(labels)} labels")
    splits = tuple(cfg.eval_files) or ("dev",)
    return TaskSpec(
        cfg.name, () if regression else tuple(labels), metrics, bool(cfg.text_pair_column), splits
    )


# --------------------------------------------------------------------------------------------------
# Reading tables


def read_tsv(path: Path, header_names: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a GLUE-style TSV (no quoting). Without ``header_names`` the first line is the header."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\r\n") for line in f]
    header = list(header_names) or lines.pop(0).split("\t")
    rows = []
    for number, line in enumerate(lines, start=1 if header_names else 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            # MNLI train rows carry fewer annotator labels than the header; gold_label is always last.
            fields = fields[:-1] + [""] * (len(header) - len(fields)) + fields[-1:]
        rows.append(dict(zip(header, fields)) | {"__line__": f"{path}:{number}"})
    return rows


def _require_columns(rows: list[dict], columns: Iterable[str], where: str) -> None:
    available = [c for c in (rows[0] if rows else {}) if c != "__line__"]
    missing = [c for c in columns if c and rows and c not in rows[0]]
    if missing:
        raise ConfigError(f"{where}: no column {missing[0]!r}; columns are {available}")


def read_table(cfg: TableConfig, source: str, data_dir: str = "") -> list[dict]:
    """Rows (dicts) of a CSV / TSV / JSONL file, or of split ``source`` of ``cfg.hf_name``."""
    if cfg.hf_name:
        ds = datasets.load_dataset(cfg.hf_name, cfg.hf_config or None, split=source)
        return [dict(row) | {"__line__": f"{cfg.hf_name}[{i}]"} for i, row in enumerate(ds)]
    path = Path(source)
    if not path.is_absolute() and data_dir and (Path(data_dir) / path).is_file():
        path = Path(data_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {source} (also looked under data_dir={data_dir!r})")
    fmt = cfg.format
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix)
        if fmt is None:
            raise ConfigError(f"{path}: cannot tell the format from {suffix!r}; set format: csv|tsv|jsonl")
    if fmt == "jsonl":
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        return [dict(row) | {"__line__": f"{path}:{i + 1}"} for i, row in enumerate(ds)]
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
        lines = list(reader)
    if cfg.header:
        names, lines, first = lines[0], lines[1:], 2
    elif cfg.columns:
        names, first = list(cfg.columns), 1
    else:
        raise ConfigError(f"{path}: header: false needs `columns:` naming the columns")
    rows = []
    for number, fields in enumerate(lines, start=first):
        if not fields:
            continue
        if len(fields) != len(names):
            raise ValueError(f"{path}:{number}: {len(fields)} fields, expected {len(names)} ({names})")
        rows.append(dict(zip(names, fields)) | {"__line__": f"{path}:{number}"})
    return rows


# --------------------------------------------------------------------------------------------------
# Rows -> datasets


def _label_id(raw, labels: Sequence[str], label_map: dict[str, str], where: str) -> int:
    value = str(raw).strip()
    value = label_map.get(value, value)
    value = LABEL_ALIASES.get(value, value)
    if value in labels:
        return labels.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(labels):
        return int(value)
    raise FinetuneInputError(f"{where}: label {raw!r} is not in the label map {list(labels)}")


def rows_to_dataset(
    rows: list[dict],
    text_columns: Sequence[str],
    label_column: str,
    spec: TaskSpec,
    label_map: dict[str, str] | None = None,
    where: str = "",
) -> datasets.Dataset:
    """Normalise rows to ``text_a`` / ``text_b`` / ``label`` (checking columns and labels)."""
    text_columns = [c for c in text_columns if c]
    _require_columns(rows, [*text_columns, label_column], where)
    if len(text_columns) != (2 if spec.pair else 1):
        raise ConfigError(f"{where}: task {spec.name} needs {2 if spec.pair else 1} text column(s)")
    out: dict[str, list] = {"text_a": [], "label": []} | ({"text_b": []} if spec.pair else {})
    for row in rows:
        raw = row[label_column]
        if str(raw).strip() == NO_GOLD_LABEL and not spec.is_regression:
            continue
        if spec.is_regression:
            try:
                label = float(raw)
            except ValueError:
                raise ValueError(f"{row['__line__']}: label {raw!r} is not a number") from None
        else:
            label = _label_id(raw, spec.labels, label_map or {}, row["__line__"])
        out["text_a"].append(str(row[text_columns[0]]))
        if spec.pair:
            out["text_b"].append(str(row[text_columns[1]]))
        out["label"].append(label)
    if not out["label"]:
        raise ValueError(f"{where}: no labelled examples")
    return datasets.Dataset.from_dict(out)


def _glue_data(spec: TaskSpec, data_dir: str) -> dict[str, datasets.Dataset]:
    layout = GLUE_LAYOUTS[spec.name]
    if not data_dir:
        hub = datasets.load_dataset("glue", spec.name)
        return {
            split: rows_to_dataset(
                [dict(r) | {"__line__": f"glue/{spec.name}/{hf}"} for r in hub[hf]],
                layout.hf_text_columns,
                "label",
                spec,
                where=f"glue/{spec.name}",
            )
            for split, hf in layout.hf_splits
        }
    folder = Path(data_dir) / layout.folder
    out = {}
    for split, filename in layout.files:
        path = folder / filename
        rows = read_tsv(path, layout.header_names)
        out[split] = rows_to_dataset(rows, layout.text_columns, layout.label_column, spec, where=str(path))
    return out


def _xnli_file(data_dir: str, split: str) -> Path:
    for base in (Path(data_dir) / "XNLI-1.0", Path(data_dir)):
        if (base / f"xnli.{split}.tsv").is_file():
            return base / f"xnli.{split}.tsv"
    raise FileNotFoundError(f"xnli.{split}.tsv not found in {data_dir}/XNLI-1.0 or {data_dir}")


def _xnli_data(spec: TaskSpec, data_dir: str, train_source: str) -> dict[str, datasets.Dataset]:
    if train_source == "mnli":
        train = _glue_data(TASKS["mnli"], data_dir)["train"]
    elif data_dir:
        path = Path(data_dir) / "XNLI-MT-1.0" / "multinli" / "multinli.train.en.tsv"
        train = rows_to_dataset(read_tsv(path), ("premise", "hypo"), "label", spec, where=str(path))
    else:
        en = datasets.load_dataset("xnli", "en", split="train")
        train = rows_to_dataset(
            [dict(r) | {"__line__": "xnli/en"} for r in en], ("premise", "hypothesis"), "label", spec
        )
    out = {"train": train}
    for split, hf_split in (("dev", "validation"), ("test", "test")):
        if data_dir:
            path = _xnli_file(data_dir, split)
            rows = read_tsv(path)
            _require_columns(rows, ("language", "gold_label", "sentence1", "sentence2"), str(path))
            by_lang = {lang: [r for r in rows if r["language"] == lang] for lang in XNLI_LANGUAGES}
            text_columns, label_column = ("sentence1", "sentence2"), "gold_label"
        else:
            by_lang = {
                lang: [
                    dict(r) | {"__line__": f"xnli/{lang}"}
                    for r in datasets.load_dataset("xnli", lang, split=hf_split)
                ]
                for lang in XNLI_LANGUAGES
            }
            text_columns, label_column = ("premise", "hypothesis"), "label"
        for lang, rows in by_lang.items():
            if not rows:
                raise ValueError(f"XNLI {split}: no rows for language {lang!r}")
            out[f"{split}.{lang}"] = rows_to_dataset(
                rows, text_columns, label_column, spec, where=f"xnli {split}"
            )
    return out


def _holdout(rows: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A fixed (seeded) train / dev split of ``rows``: the dev part is ``fraction`` of them."""
    if not 0 < fraction < 1:
        raise ConfigError(f"dev_fraction must be in (0, 1) when no evaluation file is given, got {fraction}")
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_dev = max(1, round(len(rows) * fraction))
    return rows[n_dev:], rows[:n_dev]


def movie_rows() -> list[dict]:
    """The embedded movie-review sentences (TSV id, score -4..4, sentence): sign(score) -> label, 0 dropped."""
    path = Path(movie_sentences_path())
    if not path.is_file():
        raise FileNotFoundError(f"movie sentences not found: {path}")
    rows = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3:
                continue
            try:
                score = float(fields[1])
            except ValueError:
                if number == 1:  # a header line
                    continue
                raise ValueError(f"{path}:{number}: score {fields[1]!r} is not a number") from None
            if score != 0:
                rows.append(
                    {
                        "sentence": "\t".join(fields[2:]),
                        "label": int(score > 0),
                        "__line__": f"{path}:{number}",
                    }
                )
    return rows


def _raw_label(row: dict, cfg: CustomTaskConfig) -> str:
    """A row's label value after ``label_map`` (before the label-id lookup)."""
    value = str(row[cfg.label_column]).strip()
    return cfg.label_map.get(value, value)


def _custom_data(cfg: CustomTaskConfig, data_dir: str) -> TaskData:
    if not cfg.train_file:
        raise ConfigError("task: custom needs custom.train_file")
    train_rows = read_table(cfg, cfg.train_file, data_dir)
    if cfg.eval_files:
        eval_rows = {name: read_table(cfg, file, data_dir) for name, file in cfg.eval_files.items()}
    else:
        train_rows, dev_rows = _holdout(train_rows, cfg.dev_fraction)
        eval_rows = {"dev": dev_rows}
    _require_columns(train_rows, [cfg.label_column], cfg.train_file)
    labels = list(cfg.labels)
    if not labels and cfg.task_type == "classification":
        values = {_raw_label(r, cfg) for r in train_rows}
        numeric = all(v.lstrip("-").isdigit() for v in values)
        labels = sorted(values, key=int if numeric else str)
        for split, rows in eval_rows.items():
            _require_columns(rows, [cfg.label_column], f"{cfg.name}/{split}")
            unseen = sorted({_raw_label(r, cfg) for r in rows} - values)
            if unseen:
                raise FinetuneInputError(
                    f"{cfg.name}/{split}: label {unseen[0]!r} does not occur in the training labels "
                    f"{labels}; the label sets differ (list every label in custom.labels)"
                )
    spec = custom_task_spec(cfg, labels)
    texts = (cfg.text_column, cfg.text_pair_column)
    splits = {"train": train_rows} | eval_rows
    data = {
        k: rows_to_dataset(v, texts, cfg.label_column, spec, cfg.label_map, f"{cfg.name}/{k}")
        for k, v in splits.items()
    }
    return TaskData(spec, data.pop("train"), data)


def load_task_data(cfg: FinetuneConfig) -> TaskData:
    """Load the training and evaluation sets of ``cfg.task`` (local layout when ``cfg.data_dir``)."""
    if cfg.task == "custom":
        return _custom_data(cfg.custom, cfg.data_dir)
    spec = get_task(cfg.task)
    if spec.name == "xnli":
        splits = _xnli_data(spec, cfg.data_dir, cfg.xnli_train)
    elif spec.name == "movies":
        held = dict(zip(("train", "dev"), _holdout(movie_rows(), 0.1)))
        splits = {
            k: rows_to_dataset(v, ("sentence",), "label", spec, where="movies") for k, v in held.items()
        }
    else:
        splits = _glue_data(spec, cfg.data_dir)
    return TaskData(spec, splits.pop("train"), {name: splits[name] for name in spec.eval_splits})


def load_eval_set(cfg: EvalSetConfig, spec: TaskSpec, data_dir: str) -> datasets.Dataset:
    """An out-of-domain evaluation set with ``spec``'s labels (``cfg.label_map`` translates raw labels)."""
    if not cfg.name or not cfg.file:
        raise ConfigError("eval_sets: every entry needs a name and a file (or HF split)")
    unknown = [v for v in [*cfg.label_map.values(), *cfg.prediction_map] if v not in spec.labels]
    if unknown:
        raise ConfigError(
            f"eval_sets.{cfg.name}: label {unknown[0]!r} is not a {spec.name} label {list(spec.labels)}"
        )
    rows = read_table(cfg, cfg.file, data_dir)
    texts = (cfg.text_column, cfg.text_pair_column)
    return rows_to_dataset(rows, texts, cfg.label_column, spec, cfg.label_map, where=f"eval_sets.{cfg.name}")
