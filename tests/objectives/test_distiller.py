"""The Distiller: terms, weighted total, gradients, teacher handling, mapping redraws, start-up errors."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import pytest
import torch
from transformers import AutoModel, BertConfig, BertForMaskedLM, BertModel

from pretrain_distill.models import MissingMLMHeadError, build_student, build_teacher
from pretrain_distill.models.families import encoder_layers
from pretrain_distill.objectives import (
    hidden_state_loss,
    minilmv2_loss,
    output_distribution_loss,
)
from pretrain_distill.objectives.distiller import Distiller, resolve_teacher_layer
from pretrain_distill.run_config import ObjectiveConfig, TeacherConfig

TEACHER = dict(
    vocab_size=101, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96
)
BASE = ObjectiveConfig(relation_heads=4)  # A_r = 4 divides the tiny widths (32 and 64)

OBJECTIVES = {
    "hs_uniform": {"weights": {"hs": 1.0}, "mapping": "uniform"},
    "hs_uniform_cons": {"weights": {"hs": 1.0}, "mapping": "uniform_cons"},
    "hs_uniform_last": {"weights": {"hs": 1.0}, "mapping": "uniform_last"},
    "hs_last": {"weights": {"hs": 1.0}, "mapping": "last"},
    "hs_single": {"weights": {"hs": 1.0}, "mapping": "single"},
    "hs_random": {"weights": {"hs": 1.0}, "mapping": "random"},
    "hs_explicit": {"weights": {"hs": 1.0}, "mapping": [[1, 2], [4]]},
    "od": {"weights": {"od": 1.0}},
    "minilmv2_lt": {"weights": {"minilmv2": 1.0}, "teacher_layer": "L_T"},
    "minilmv2_lt1": {"weights": {"minilmv2": 1.0}, "teacher_layer": "L_T-1"},
    "minilmv2_lt2": {"weights": {"minilmv2": 1.0}, "teacher_layer": "L_T-2"},
    "direct_minilm": {"weights": {"direct_minilm": 1.0}},
    "direct_minilm_orth": {"weights": {"direct_minilm": 1.0}, "orthogonal_weight": 0.5},
    "distilbert": {"weights": {"cosine": 1.0, "od": 5.0, "mlm": 2.0}},
    "hs_plus_minilmv2": {"weights": {"hs": 0.5, "minilmv2": 2.0}},
}


def make_teacher(**overrides) -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**{**TEACHER, **overrides})).eval()


def make(name: str, **cfg_overrides) -> Distiller:
    """A Distiller for objective ``name``: 4x64 teacher; 2x32 student (2x64 teacher-initialised for cosine)."""
    cfg = replace(BASE, **{**OBJECTIVES[name], **cfg_overrides})
    teacher = make_teacher()
    torch.manual_seed(1)
    if "cosine" in cfg.weights:
        student = build_student([2, 4, 64, 96], teacher.config, init="teacher", teacher=teacher)
    else:
        student = build_student([2, 4, 32, 48], teacher.config)
    return Distiller(cfg, student, teacher)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Four sequences of 12 tokens (one padded after 7) with a few MLM labels."""
    torch.manual_seed(2)
    input_ids = torch.randint(5, 100, (4, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[:, 2] = input_ids[:, 2]
    labels[0, 5] = input_ids[0, 5]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_finite_terms_and_total_is_weighted_sum(name, batch):
    distiller = make(name)
    out = distiller(**batch)
    weights = dict(distiller.weights)
    if "orthogonal_weight" in OBJECTIVES[name]:
        weights["orthogonality"] = OBJECTIVES[name]["orthogonal_weight"]
    assert set(out) == set(weights) | {"loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    expected = sum(weights[k] * out[k] for k in weights)
    torch.testing.assert_close(out["loss"], expected)
    assert out["loss"].item() > 0


@pytest.mark.parametrize(
    "name",
    ["hs_uniform", "hs_random", "od", "minilmv2_lt1", "direct_minilm", "distilbert", "hs_plus_minilmv2"],
)
def test_loss_drops_after_twenty_adam_steps(name, batch):
    torch.manual_seed(3)
    distiller = make(name)
    optimizer = torch.optim.Adam(distiller.parameters(), lr=3e-3)
    distiller.eval()  # no dropout: the same batch gives the same loss
    with torch.no_grad():
        before = distiller(**batch)["loss"].item()
    for _ in range(20):
        optimizer.zero_grad()
        distiller(**batch)["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        after = distiller(**batch)["loss"].item()
    assert after < 0.8 * before


def test_terms_equal_losses_on_reference_forward(batch):
    """HS and MiniLMv2 from the taps equal the pure losses on an ordinary full forward of both models."""
    distiller = make("hs_plus_minilmv2", teacher_layer="L_T-1", student_layer=1).eval()
    reference_teacher = make_teacher()  # same seed: the same weights, not truncated
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        out = distiller(ids, mask)
        t_states = reference_teacher.bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s_states = distiller.student.bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        expected_hs = hidden_state_loss(s_states, t_states, distiller.mapping, distiller.hs_projections, mask)
        t_attn = reference_teacher.bert.encoder.layer[2].attention.self
        s_attn = distiller.student.bert.encoder.layer[0].attention.self
        t_qkv = tuple(lin(t_states[2]) for lin in (t_attn.query, t_attn.key, t_attn.value))
        s_qkv = tuple(lin(s_states[0]) for lin in (s_attn.query, s_attn.key, s_attn.value))
        expected_minilm = minilmv2_loss(s_qkv, t_qkv, mask, 4)
    torch.testing.assert_close(out["hs"], expected_hs)
    torch.testing.assert_close(out["minilmv2"], expected_minilm)


def test_od_term_matches_full_model_logits(batch):
    distiller = make("od").eval()
    reference_teacher = make_teacher()
    with torch.no_grad():
        out = distiller(**batch)
        expected = output_distribution_loss(
            distiller.student(batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            reference_teacher(batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            1.0,
            batch["labels"] != -100,
        )
    torch.testing.assert_close(out["od"], expected)


@pytest.mark.parametrize("od_positions", ["masked", "all"])
def test_logit_terms_and_gradients_match_full_logits_of_the_whole_batch(od_positions, batch):
    """OD and MLM run the MLM heads on the positions they read only: same losses and gradients as from
    the full ``[B, T, V]`` logits, and the student head sees exactly those rows."""
    distiller = make("od", weights={"od": 1.0, "mlm": 1.0}, od_positions=od_positions).eval()
    rows = []
    head = distiller.student.cls
    with mock.patch.object(
        head, "forward", side_effect=lambda h: rows.append(h.shape[0]) or type(head).forward(head, h)
    ):
        out = distiller(**batch)
    masked, valid = batch["labels"] != -100, batch["attention_mask"] != 0
    assert rows == [int((masked if od_positions == "masked" else valid | masked).sum())]
    params = [p for p in distiller.student.parameters() if p.requires_grad]
    got = torch.autograd.grad(out["loss"], params, allow_unused=True)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        teacher_logits = make_teacher()(ids, attention_mask=mask).logits
    student_logits = distiller.student(ids, attention_mask=mask).logits  # the full [B, T, V] logits
    od = output_distribution_loss(
        student_logits, teacher_logits, 1.0, masked if od_positions == "masked" else valid
    )
    mlm = torch.nn.functional.cross_entropy(student_logits[masked], batch["labels"][masked])
    torch.testing.assert_close(out["od"], od)
    torch.testing.assert_close(out["mlm"], mlm)
    expected = torch.autograd.grad(od + mlm, params, allow_unused=True)
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "name, overrides, reached",
    [
        ("hs_uniform", {}, [1, 2]),
        ("minilmv2_lt1", {"student_layer": 1}, [1]),
        ("direct_minilm", {}, [1, 2]),
        ("od", {}, [1, 2]),
    ],
)
def test_gradient_reaches_covered_student_layers_and_no_teacher_parameter(name, overrides, reached, batch):
    distiller = make(name, **overrides)
    distiller(**batch)["loss"].backward()
    for index, layer in enumerate(encoder_layers(distiller.student), start=1):
        grad = layer.attention.self.query.weight.grad
        if index in reached:
            assert grad is not None and grad.abs().sum() > 0, f"student layer {index} got no gradient"
        else:
            assert grad is None, f"student layer {index} is covered by no loss but got a gradient"
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    learned = [p for n, p in distiller.named_parameters() if not n.startswith("student.")]
    assert all(p.grad is not None for p in learned)


def test_teacher_is_not_a_submodule(batch):
    distiller = make("hs_plus_minilmv2")
    teacher_params = {id(p) for p in distiller.teacher.parameters()}
    assert not teacher_params & {id(p) for p in distiller.parameters()}
    assert not any(m is distiller.teacher for m in distiller.modules())
    assert all(k.startswith(("student.", "hs_projections.")) for k in distiller.state_dict())
    expected = sum(p.numel() for p in distiller.student.parameters()) + sum(
        p.numel() for p in distiller.hs_projections.parameters()
    )
    assert sum(p.numel() for p in distiller.parameters()) == expected
    distiller.to(torch.float64)
    assert next(distiller.teacher.parameters()).dtype == torch.float32
    distiller.train()
    assert not distiller.teacher.training


def test_teacher_runs_under_inference_mode_truncated_and_headless(batch):
    distiller = make("minilmv2_lt2")
    assert distiller.teacher_depth == 2 and len(encoder_layers(distiller.teacher)) == 2
    seen = []
    distiller.teacher.bert.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    head = mock.Mock(side_effect=distiller.teacher.cls.forward)
    student_head = mock.Mock(side_effect=distiller.student.cls.forward)
    with mock.patch.object(distiller.teacher.cls, "forward", head):
        with mock.patch.object(distiller.student.cls, "forward", student_head):
            distiller(**batch)["loss"].backward()
    assert seen == [True]
    assert head.call_count == 0 and student_head.call_count == 0  # no MLM head unless a loss reads logits


def test_student_head_runs_when_logits_are_needed(batch):
    distiller = make("od")
    student_head = mock.Mock(side_effect=distiller.student.cls.forward)
    with mock.patch.object(distiller.student.cls, "forward", student_head):
        distiller(**batch)
    assert student_head.call_count == 1


def test_sdpa_is_used_and_no_attention_matrix_is_requested(batch):
    distiller = make("minilmv2_lt1")  # teacher truncated to 3 layers, student 2
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=sdpa) as spy:
        distiller(**batch)
    assert spy.call_count == 3 + 2
    assert distiller.teacher.config._attn_implementation == "sdpa"
    assert distiller.student.config._attn_implementation == "sdpa"


def test_mlm_alone_never_runs_the_teacher(batch):
    distiller = make("od", weights={"mlm": 1.0})
    assert distiller.teacher_depth == 0
    calls = []
    distiller.teacher.register_forward_hook(lambda *_: calls.append(1))
    out = distiller(**batch)
    assert not calls and set(out) == {"mlm", "loss"}


def test_teacher_in_bf16_student_in_fp32(batch):
    distiller = make("hs_plus_minilmv2", weights={"hs": 1.0, "minilmv2": 1.0, "od": 1.0})
    distiller.teacher.to(torch.bfloat16)
    out = distiller(**batch)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert distiller.student.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_od_with_headless_teacher_fails_at_construction():
    teacher = BertModel(BertConfig(**TEACHER))
    student = build_student([2, 4, 32, 48], teacher.config)
    with pytest.raises(MissingMLMHeadError, match="'od' term needs the teacher's MLM logits.*no MLM head"):
        Distiller(replace(BASE, weights={"od": 1.0}), student, teacher)


def test_needs_masking_and_labels():
    assert make("od").needs_masking and make("distilbert").needs_masking
    assert not make("od", od_positions="all").needs_masking
    assert not make("hs_uniform").needs_masking and not make("minilmv2_lt").needs_masking
    with pytest.raises(ValueError, match=r"\['od'\] need MLM labels"):
        make("od")(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))


def test_teacher_depth_is_the_deepest_layer_read():
    assert make("hs_uniform").teacher_depth == 4  # uniform 4 -> 2: teacher layers 2, 4
    assert make("hs_explicit", mapping=[[1], [2]]).teacher_depth == 2
    assert make("minilmv2_lt1").teacher_depth == 3
    assert make("direct_minilm", teacher_layer="2").teacher_depth == 2
    assert make("distilbert").teacher_depth == 4


def test_random_mapping_redraw_is_deterministic_per_epoch(batch):
    a, b = make("hs_random"), make("hs_random")
    draws = []
    for epoch in range(6):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        a.set_step(epoch * 10 + 3)  # steps do not redraw a per-epoch mapping
        assert a.mapping == b.mapping
        draws.append(a.mapping)
        assert all(len(layers) == 1 for layers in a.mapping)
        a(**batch)  # the teacher tap follows the redraw
    assert len(set(map(tuple, draws))) > 1
    resumed = make("hs_random")
    resumed.set_epoch(4)  # a resumed run needs only the counter
    assert resumed.mapping == draws[4]
    other_seed = make("hs_random", mapping_seed=7)
    assert [other_seed.set_epoch(e) or other_seed.mapping for e in range(6)] != draws


def test_random_mapping_redraw_per_step_and_every_n_steps():
    per_step, every_3 = make("hs_random", remap_every="step"), make("hs_random", remap_every=3)
    seen_step, seen_3 = [], []
    for step in range(9):
        per_step.set_step(step)
        every_3.set_step(step)
        seen_step.append(per_step.mapping)
        seen_3.append(every_3.mapping)
    assert seen_3[0] == seen_3[1] == seen_3[2] and seen_3[3] == seen_3[4] == seen_3[5]
    assert seen_3[3] == seen_step[1] and seen_3[6] == seen_step[2]  # block n draws from (seed, n)
    assert len(set(map(tuple, seen_step))) > 1


def test_fixed_mappings_do_not_change_with_epochs():
    distiller = make("hs_uniform_cons")
    first = distiller.mapping
    distiller.set_epoch(5)
    distiller.set_step(100)
    assert distiller.mapping == first == [(1, 2), (3, 4)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"weights": {"hs": 1.0, "attention": 1.0}}, r"unknown objective term\(s\) \['attention'\]"),
        ({"weights": {"hs": -1.0}}, "must be >= 0"),
        ({"weights": {"hs": 0.0}}, "no term a positive weight"),
        (
            {"weights": {"minilmv2": 1.0}, "relation_heads": 48},
            "relation_heads=48 must divide the student's Q width 32",
        ),
        ({"weights": {"minilmv2": 1.0}, "teacher_layer": "L_T-4"}, "outside the teacher's 1..4"),
        ({"weights": {"minilmv2": 1.0}, "teacher_layer": "last"}, "must be L_T, L_T-n or a layer number"),
        ({"weights": {"minilmv2": 1.0}, "student_layer": 3}, "student_layer 3 is outside the student's 1..2"),
        ({"weights": {"cosine": 1.0}}, "'cosine' term needs equal widths"),
        ({"weights": {"hs": 1.0}, "mapping": "random", "remap_every": "batch"}, "remap_every must be"),
        ({"weights": {"hs": 1.0}, "mapping": "zigzag"}, "unknown layer mapping strategy 'zigzag'"),
    ],
)
def test_bad_objectives_fail_at_construction(overrides, message):
    teacher = make_teacher()
    student = build_student([2, 4, 32, 48], teacher.config)
    with pytest.raises(ValueError, match=message):
        Distiller(replace(BASE, **overrides), student, teacher)


def test_teacher_shallower_than_needed_is_refused():
    teacher = make_teacher()
    student = build_student([2, 4, 32, 48], teacher.config)
    Distiller(replace(BASE, weights={"minilmv2": 1.0}, teacher_layer="L_T-2"), student, teacher)
    with pytest.raises(ValueError, match="reads teacher layer 4 but the teacher computes only 2 layers"):
        Distiller(replace(BASE, weights={"minilmv2": 1.0}, teacher_layer="L_T"), student, teacher)


def test_resolve_teacher_layer():
    assert [resolve_teacher_layer(s, 12) for s in ("L_T", "L_T-1", "l_t-2", "7", 3)] == [12, 11, 10, 7, 3]


@pytest.mark.integration
def test_real_minilm_teacher_minilmv2_hs_direct(teacher_dir, tokenizer):
    teacher = build_teacher(TeacherConfig(path=str(teacher_dir)))
    full = AutoModel.from_pretrained(teacher_dir).eval()
    student = build_student([2, 4, 128, 256], teacher.config)
    cfg = ObjectiveConfig(
        weights={"minilmv2": 1.0, "hs": 1.0, "direct_minilm": 1.0},
        mapping="last",
        teacher_layer="L_T-1",
        relation_heads=16,
    )
    distiller = Distiller(cfg, student, teacher)
    assert distiller.teacher_depth == 6 and distiller.mapping == [(5,), (6,)]
    enc = tokenizer(
        ["The teacher is frozen.", "A student learns from relations between queries and keys."],
        padding=True,
        return_tensors="pt",
    )
    out = distiller(enc["input_ids"], enc["attention_mask"])
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None for p in distiller.student.bert.encoder.parameters())
    with torch.no_grad():  # the taps saw the real teacher's states
        ref = full(**enc, output_hidden_states=True).hidden_states
        base = distiller.teacher(**enc).last_hidden_state
    torch.testing.assert_close(base, ref[6], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_od_with_real_headless_minilm_fails_at_start_up(teacher_dir):
    teacher = build_teacher(TeacherConfig(path=str(teacher_dir)))
    student = build_student([1, 4, 64, 64], teacher.config)
    with pytest.raises(MissingMLMHeadError, match="has no MLM head.*pretrain-distill fit-mlm-head"):
        Distiller(ObjectiveConfig(weights={"od": 1.0}), student, teacher)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "distilbert"])
def test_other_families(family, batch):
    from tests.models.conftest import tiny_models

    teacher = tiny_models()[family]
    student = build_student([1, 4, 32, 48], teacher.config)
    cfg = replace(BASE, weights={"hs": 1.0, "minilmv2": 1.0, "direct_minilm": 1.0, "od": 1.0, "mlm": 1.0})
    distiller = Distiller(cfg, student, teacher)
    ids = batch["input_ids"][:, :10] % 90 + 5
    out = distiller(ids, batch["attention_mask"][:, :10], batch["labels"][:, :10])
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()


@pytest.fixture(scope="module")
def minilm_teacher(teacher_dir):
    return build_teacher(TeacherConfig(path=str(teacher_dir)))


OBJECTIVE_FILES = [
    "hs_uniform", "hs_uniform_cons", "hs_uniform_last", "hs_last", "hs_single", "hs_random",
    "minilmv2_lt", "minilmv2_lt1", "minilmv2_lt2", "direct_minilm", "od", "distilbert",
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("name", OBJECTIVE_FILES)
def test_objective_yaml_with_real_teacher(name, minilm_teacher, tokenizer):
    """Every objective file runs with the MiniLM teacher and the minilm_3x192 student; OD ones refuse it."""
    import copy

    from pretrain_distill.models import build_student_from_config
    from pretrain_distill.run_config import load_run_config

    cfg = load_run_config(["students/minilm_3x192.yaml", f"objectives/{name}.yaml"])
    teacher = copy.deepcopy(minilm_teacher)
    if "od" in cfg.objective.weights:
        cfg.student.init = "random"  # DistilBERT's teacher init would need the teacher's width
        with pytest.raises(MissingMLMHeadError, match="has no MLM head"):
            Distiller(cfg.objective, build_student_from_config(cfg.student, teacher), teacher)
        return
    distiller = Distiller(cfg.objective, build_student_from_config(cfg.student, teacher), teacher)
    enc = tokenizer(
        ["Short one.", "A slightly longer second sentence here."], padding=True, return_tensors="pt"
    )
    out = distiller(enc["input_ids"], enc["attention_mask"])
    assert all(torch.isfinite(v) for v in out.values()) and out["loss"] > 0
