"""Export: the base encoder by default (clean AutoModel / AutoModelForSequenceClassification loads), the
MLM head only when trained (stored once), the sentence-transformers layout, the model card, --push-to-hub
against a stand-in, and nothing written before the inputs are checked.

The runs here are real checkpoints written by the engine's CheckpointStore (student saved the way
``engine.state.save_checkpoint`` saves it), without training: export only reads them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from pretrain_distill import cli
from pretrain_distill.core.config_loading import save_config
from pretrain_distill.engine.checkpoint import CheckpointStore
from pretrain_distill.engine.state import student_state_dict
from pretrain_distill.export import export_run
from pretrain_distill.models import build_student
from pretrain_distill.run_config import load_run_config

SHAPE = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


def _teacher_config(model_type: str, vocab: int):
    if model_type == "distilbert":
        return AutoConfig.for_model(
            "distilbert", vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64
        )
    return AutoConfig.for_model(model_type, vocab_size=vocab, hidden_size=32, **SHAPE)


def make_run(
    root: Path, tokenizer, model_type="bert", weights="{hs: 1.0}", teacher="", steps=(2, 4), extra=()
) -> Path:
    """A run directory with complete checkpoints at ``steps`` (each student a distinct random draw);
    ``extra``: more run-config overrides."""
    run = root / f"run-{model_type}"
    teacher_dir = root / f"teacher-{model_type}"
    config = _teacher_config(model_type, len(tokenizer))
    AutoModel.from_config(config).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(run / "tokenizer")
    cfg = load_run_config(
        overrides=[
            f"teacher.path={teacher or teacher_dir}",
            f"objective.weights={weights}",
            "objective.mapping=uniform",
            f"train.output_dir={run}",
            f"data.shards={root / 'shards'}",
            "student.preset=null",
            "student.layers=2",
            "student.heads=2",
            "student.hidden=32",
            "student.ffn=64",
            *extra,
        ]
    )
    save_config(cfg, run / "config.yaml")
    manifest = {"sources": ["text:corpus.txt#doc=line"], "totals": {"tokens": 12345, "sequences": 500}}
    (root / "shards").mkdir(exist_ok=True)
    (root / "shards" / "manifest.json").write_text(json.dumps(manifest))  # the part the card reads
    store = CheckpointStore(run / "checkpoints", keep_last=5)
    for step in steps:
        torch.manual_seed(step)
        student = build_student([2, 2, 32, 64], config)
        staged = store.begin(step)
        student.save_pretrained(staged / "student", state_dict=student_state_dict(student, 0))
        save_config(cfg, staged / "config.yaml")
        state = {
            "step": step,
            "epoch": 0,
            "tokens": 1000 * step,
            "last_losses": {"loss": 0.5, "loss_hs": 0.5},
        }
        store.commit(step, {"state": state, "world_size": 1})
    return run


def stored(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def trained_student(run: Path, step: int):
    return AutoModelForMaskedLM.from_pretrained(run / "checkpoints" / f"step_{step:08d}" / "student")


def load_info(auto, path: Path):
    return auto.from_pretrained(path, output_loading_info=True)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, tokenizer):
    return make_run(tmp_path_factory.mktemp("export"), tokenizer)


def test_default_is_the_base_encoder_with_an_identity_pooler(bert_run, tmp_path):
    out = export_run(bert_run, out=tmp_path / "model")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not any(k.startswith("cls.") for k in stored(out))  # no untrained MLM head
    model, info = load_info(AutoModel, out)
    assert not any(info.values()), info  # every weight found, none left over
    student = trained_student(bert_run, 4)  # the newest checkpoint
    for name, value in student.bert.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.no_grad():
        output = model(input_ids=ids)
    torch.testing.assert_close(output.pooler_output, torch.tanh(output.last_hidden_state[:, 0]))
    _, info = load_info(AutoModelForSequenceClassification, out)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_other_families_export_their_base_class(model_type, tmp_path, tokenizer):
    run = make_run(tmp_path, tokenizer, model_type=model_type, steps=(1,))
    out = export_run(run)
    expected = {"roberta": "RobertaModel", "distilbert": "DistilBertModel"}[model_type]
    assert json.loads((out / "config.json").read_text())["architectures"] == [expected]
    _, info = load_info(AutoModel, out)
    assert not any(info.values()), info
    _, info = load_info(AutoModelForSequenceClassification, out)
    assert all(k.startswith(("classifier.", "pre_classifier.")) for k in info["missing_keys"]), info
    # RobertaForSequenceClassification has no pooler: it leaves the exported one unused (as for roberta-base)
    assert all(k.startswith("pooler.") for k in info["unexpected_keys"]), info


def test_mlm_head_kept_when_trained_and_stored_once(tmp_path, tokenizer):
    run = make_run(tmp_path, tokenizer, weights="{od: 1.0}", steps=(3,))
    out = export_run(run)
    keys = stored(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert "cls.predictions.transform.dense.weight" in keys
    assert "cls.predictions.decoder.weight" not in keys  # tied to the word embeddings: stored once
    model, info = load_info(AutoModelForMaskedLM, out)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) <= {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }
    trained = trained_student(run, 3)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    values = sum(math.prod(shape) for shape in keys.values())
    assert values == sum(unique.values()) + 32 * 32 + 32  # the parameters once, plus the pooler
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "fill-mask"
    # and the head is dropped on request, and by the sentence-transformers format
    base = export_run(run, out=tmp_path / "base", with_mlm_head=False)
    assert not any(k.startswith("cls.") for k in stored(base))
    st = export_run(run, out=tmp_path / "st", fmt="sentence-transformers")
    assert not any(k.startswith("cls.") for k in stored(st)) and (st / "modules.json").is_file()


def test_with_mlm_head_keeps_an_untrained_head_on_request_and_says_so(bert_run, tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["export", str(bert_run), "--out", str(out), "--with-mlm-head"]) == 0
    assert any(k.startswith("cls.") for k in stored(out))
    assert "keeping an MLM head this run did not train" in capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "MLM head this run did NOT train" in card
    assert f"--checkpoint {bert_run.name}/checkpoints/step_00000004 --out m --with-mlm-head" in card


def test_the_cli_prints_no_weight_loading_or_writing_bars(bert_run, tmp_path, capfd):
    """transformers' own bars ("Loading weights", "Writing model shards") would break our progress bars
    at every checkpoint and export; the commands silence them and print their own lines."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(None)
    try:
        assert cli.main(["export", str(bert_run), "--out", str(tmp_path / "m")]) == 0
        printed = "".join(capfd.readouterr())
        assert "export:" in printed
        assert "Loading weights" not in printed and "Writing model shards" not in printed
    finally:
        hf_logging.set_tqdm_hook(previous)


@pytest.mark.slow
def test_the_export_command_prints_only_the_export_path_on_stdout(bert_run, tmp_path):
    """`$(pretrain-distill export RUN)` is the path: in a fresh process (DeepSpeed imported on the way,
    whose logger writes to stdout) no library line reaches stdout."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"} | {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "m"
    argv = [sys.executable, "-m", "pretrain_distill.cli", "export", str(bert_run), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n", proc.stdout


@pytest.mark.slow
def test_two_exports_to_one_out_at_once_leave_one_whole_export(bert_run, tmp_path):
    """Two `export` processes (of different checkpoints) racing to one --out both succeed; what stays is
    one whole export that loads, and neither leaves its staging directory behind."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"} | {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "m"
    argv = [sys.executable, "-m", "pretrain_distill.cli", "export", str(bert_run), "--out", str(out)]
    steps = ("step_00000002", "step_00000004")
    procs = [
        subprocess.Popen(
            [*argv, "--checkpoint", str(bert_run / "checkpoints" / step)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for step in steps
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    card = (out / "README.md").read_text()
    assert ("2 optimizer steps" in card) != ("4 optimizer steps" in card)
    AutoModel.from_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_card_names_teacher_data_steps_parameters_and_checkpoint(bert_run, tmp_path, capsys):
    checkpoint = bert_run / "checkpoints" / "step_00000002"
    argv = ["export", str(bert_run), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m")]
    assert cli.main([*argv, "--license", "apache-2.0"]) == 0
    err = capsys.readouterr().err
    assert f"{checkpoint} (step 2, written " in err  # which checkpoint it exports (on this machine)
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    for needle in (
        "**Teacher (base model)**: `teacher-bert`",  # its folder, not this machine's path
        "hs x 1",
        "layer mapping `uniform`",
        "2 optimizer steps",
        "2,000 (0.00M) tokens seen",
        f"`{bert_run.name}/checkpoints/step_00000002`, step 2, written ",
        "| loss_hs | 0.5 |",
        "pretrain-distill export",
        "**Licence**: apache-2.0 (given at export)",
        "**Data**: `text:corpus.txt#doc=line`; 12,345 (0.01M) tokens in the corpus",
    ):
        assert needle in card.text, needle
    params = sum(
        p.numel()
        for n, p in AutoModel.from_pretrained(tmp_path / "m").named_parameters()
        if "pooler" not in n
    )
    assert f"{params:,} encoder parameters" in card.text


def test_card_of_the_embedded_teacher_names_its_hub_id_and_licence(tmp_path, tokenizer, teacher_dir):
    run = make_run(tmp_path, tokenizer, teacher="minilm", steps=(1,))
    card = ModelCard.load(export_run(run) / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license == "apache-2.0"  # read from the teacher's own card
    assert "**Teacher (base model)**: `sentence-transformers/all-MiniLM-L6-v2`" in card.text
    assert "local copy" not in card.text


def test_card_and_config_carry_no_local_path_unless_asked(tmp_path, tokenizer):
    """What --push-to-hub publishes names the teacher by its folder, the data by source kind and file
    name, the checkpoint within the run, the student's init by its folder; never this machine's paths
    (here the test's temporary directory, under which everything lives). --card-paths full keeps them."""
    init = f"student.init_from={tmp_path / 'stage1' / 'export'}"
    run = make_run(tmp_path, tokenizer, steps=(1,), extra=[init])
    manifest = tmp_path / "shards" / "manifest.json"
    data = tmp_path / "data" / "dump.xml.bz2"
    spec = f"wikipedia:{data}#index={tmp_path / 'data' / 'index.txt.bz2'}"
    manifest.write_text(json.dumps({"sources": [spec], "totals": {"tokens": 10}}))
    for style in ("names", "full"):
        out = export_run(run, out=tmp_path / f"out-{style}", card_paths=style)
        card, copied = (out / "README.md").read_text(), (out / "distill_config.yaml").read_text()
        if style == "full":
            assert str(tmp_path) in card and str(tmp_path) in copied
            continue
        assert str(tmp_path) not in card and str(tmp_path) not in copied
        for needle in (
            "`teacher-bert`",
            "`wikipedia:dump.xml.bz2#index=index.txt.bz2`",
            "`run-bert/checkpoints/step_00000001`",
            "from `export`",
            "pretrain-distill export run-bert --checkpoint run-bert/checkpoints/step_00000001 --out out-names",
        ):
            assert needle in card, needle
        assert "path: teacher-bert" in copied and "output_dir: run-bert" in copied
    with pytest.raises(ValueError, match="--card-paths 'all': expected one of names, full"):
        export_run(run, out=tmp_path / "x", card_paths="all")


def test_sentence_transformers_format_loads_offline_with_the_teachers_pooling(
    tmp_path, tokenizer, teacher_dir, monkeypatch
):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = make_run(tmp_path, tokenizer, teacher="minilm", steps=(1,))
    out = tmp_path / "st"
    assert cli.main(["export", str(run), "--format", "sentence-transformers", "--out", str(out)]) == 0
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 32
    model = st.SentenceTransformer(str(out), device="cpu")
    sentences = ["a quiet film", "a loud and long film"]
    embeddings = torch.as_tensor(model.encode(sentences))
    # the same as mean pooling + L2 normalisation of the exported encoder by hand
    encoder = AutoModel.from_pretrained(out)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-5)
    assert ModelCard.load(out / "README.md").data.library_name == "sentence-transformers"


def test_push_to_hub_uploads_the_export(bert_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    argv = ["export", str(bert_run), "--out", str(tmp_path / "m"), "--push-to-hub", "me/student", "--private"]
    assert cli.main(argv) == 0
    assert calls[0] == ("create", "me/student", {"private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload", "me/student")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "distill_config.yaml"} <= set(
        calls[1][2]
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-run", "no such run directory"),
        ("no-checkpoint", "no complete checkpoint"),
        ("incomplete", "not a complete checkpoint"),
        ("out-is-run", "is the run directory"),
        ("out-not-export", "exists and is not an earlier export"),
        ("st-with-head", "holds the base encoder only"),
    ],
)
def test_inputs_checked_before_anything_is_written(case, message, bert_run, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", str(bert_run), "--out", str(out)]
    if case == "no-run":
        args[1] = str(tmp_path / "nowhere")
    elif case == "no-checkpoint":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "incomplete":
        args += ["--checkpoint", str(bert_run / "checkpoints")]
    elif case == "out-is-run":
        args[3] = str(bert_run)
    elif case == "out-not-export":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "st-with-head":
        args += ["--format", "sentence-transformers", "--with-mlm-head"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(bert_run.glob("export*")) and not list(bert_run.glob(".*tmp-*"))


def test_a_killed_checkpoint_write_is_skipped_and_a_corrupt_one_named(tmp_path, tokenizer, capsys):
    run = make_run(tmp_path, tokenizer, steps=(1, 2))
    (run / "checkpoints" / ".tmp-step_00000003" / "student").mkdir(parents=True)  # killed mid-write
    assert "1 optimizer steps" not in (export_run(run) / "README.md").read_text()
    assert "2 optimizer steps" in (run / "export" / "README.md").read_text()
    newest = run / "checkpoints" / "step_00000002"
    (newest / "COMPLETE").write_text("{truncated")
    # the default (newest verified) falls back to step 1; an explicit --checkpoint names the bad file
    assert "1 optimizer steps" in (export_run(run, out=tmp_path / "fallback") / "README.md").read_text()
    capsys.readouterr()
    assert cli.main(["export", str(run), "--checkpoint", str(newest), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "step_00000002/COMPLETE: unreadable marker" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_reexport_replaces_an_earlier_export(bert_run, tmp_path):
    out = export_run(bert_run, out=tmp_path / "m", checkpoint=bert_run / "checkpoints" / "step_00000002")
    (out / "stale.txt").write_text("from the first export")
    export_run(bert_run, out=out)
    assert not (out / "stale.txt").exists() and "4 optimizer steps" in (out / "README.md").read_text()
