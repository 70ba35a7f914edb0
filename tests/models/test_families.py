"""Every family entry, checked on a tiny random model of it: hidden states follow the model's own
``output_hidden_states``, tapped Q/K/V equal the layer's token projections computed by hand (on a padded
batch), rotary Q/K after rotation equal Hugging Face's own ``apply_rotary_pos_emb``, students of every
family and shape, init-from-teacher copies or lists every parameter, the MLM head chain, attention
implementations, and the refusals (sliding-window relation layers, relation heads vs grouped K/V widths,
unknown architectures)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForMaskedLM, GPT2Config, GPT2Model
from transformers.models.eurobert import modeling_eurobert
from transformers.models.modernbert import modeling_modernbert

from pretrain_distill.models import Tap, UnsupportedArchitectureError, base_model, build_student, spec_of
from pretrain_distill.models.families import (
    FAMILIES,
    MODEL_TYPES,
    attention_implementation,
    encoder_layers,
    family_for_model_type,
    mlm_head,
    sliding_window_layers,
)
from pretrain_distill.objectives import Distiller
from pretrain_distill.objectives.distiller import mlm_logits_at
from pretrain_distill.run_config import ObjectiveConfig
from tests.models.conftest import MODEL_TYPES as TESTED
from tests.models.conftest import tiny_family_config, tiny_models

#: Written out by hand from the transformers modeling code, independently of the family entries.
QKV_WEIGHTS = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "electra"),
        ("attention.self.query", "attention.self.key", "attention.self.value"),
    ),
    "distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
    "modernbert": ("attn.Wqkv",),
    "deberta-v2": ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
    "eurobert": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
}
#: Pre-LN families normalise a layer's input before its attention projects it.
ATTENTION_INPUT_NORM = {
    "modernbert": "attn_norm",
    "eurobert": "input_layernorm",
    "xlm-roberta-xl": "attention.self_attn_layer_norm",
}


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def qkv_by_hand(model_type: str, layer: torch.nn.Module, layer_input: torch.Tensor):
    """Q, K, V of one layer: ``x W^T + b`` of its own weights on its (normalised, pre-LN) input."""
    x = layer_input
    if model_type in ATTENTION_INPUT_NORM:
        x = _module(layer, ATTENTION_INPUT_NORM[model_type])(x)
    outs = [F.linear(x, m.weight, m.bias) for m in (_module(layer, p) for p in QKV_WEIGHTS[model_type])]
    return tuple(outs[0].chunk(3, dim=-1)) if len(outs) == 1 else tuple(outs)


def test_the_test_models_cover_every_family():
    assert set(TESTED) == set(MODEL_TYPES)
    assert len({t for f in FAMILIES for t in f.model_types}) == len(MODEL_TYPES)  # no type in two entries


@pytest.mark.parametrize("model_type", TESTED)
def test_hidden_states_are_the_models_own_output_hidden_states(model_type, batch):
    """0 = embedding output, i = layer i, L = last_hidden_state (final norm included for pre-LN)."""
    model = tiny_models([model_type], layers=3)[model_type]
    tap = Tap(model, hidden_layers=range(4))
    with torch.no_grad():
        out = base_model(model)(**batch, output_hidden_states=True)
    captured = tap.pop()
    assert len(out.hidden_states) == 4
    for index, reference in enumerate(out.hidden_states):
        torch.testing.assert_close(captured.hidden[index], reference, rtol=0, atol=0)
    torch.testing.assert_close(captured.hidden[3], out.last_hidden_state, rtol=0, atol=0)


def test_pre_ln_last_state_includes_the_final_norm(batch):
    """Without the convention, a hook on the last layer would give the un-normalised residual stream."""
    model = tiny_models(["eurobert"], layers=3)["eurobert"]
    raw = []
    encoder_layers(model)[-1].register_forward_hook(lambda m, i, o: raw.append(o))
    tap = Tap(model, hidden_layers=[3])
    with torch.no_grad():
        model.model(**batch)
    last = tap.pop().hidden[3]
    torch.testing.assert_close(last, model.model.norm(raw[0]))
    assert not torch.allclose(last, raw[0])


def test_deberta_first_layer_state_is_after_its_conv(batch):
    """DeBERTa-v2 with ``conv_kernel_size`` adds a convolution to layer 1's output (v2-xlarge)."""
    torch.manual_seed(0)
    config = tiny_family_config("deberta-v2", conv_kernel_size=3)
    model = AutoModel.from_config(config, attn_implementation="eager").eval()
    assert model.encoder.conv is not None
    tap = Tap(model, hidden_layers=[1, 2])
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    captured = tap.pop()
    torch.testing.assert_close(captured.hidden[1], out.hidden_states[1], rtol=0, atol=0)
    torch.testing.assert_close(captured.hidden[2], out.hidden_states[2], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", TESTED)
def test_tapped_qkv_are_the_layers_token_projections(model_type, batch):
    model = tiny_models([model_type], layers=3)[model_type]
    tap = Tap(model, qkv_layers=[1, 2, 3])
    with torch.no_grad():
        states = base_model(model)(**batch, output_hidden_states=True).hidden_states
    captured = tap.pop()
    for index, layer in enumerate(encoder_layers(model), start=1):
        with torch.no_grad():
            expected = qkv_by_hand(model_type, layer, states[index - 1])
        for name, got, want in zip("QKV", captured.qkv[index], expected):
            assert got.shape[:2] == (2, 7), (name, got.shape)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"layer {index} {name}")
    if model_type == "eurobert":  # grouped K/V: 2 of 4 heads
        assert [t.shape[-1] for t in captured.qkv[1]] == [64, 32, 32]


def test_deberta_relative_position_call_never_replaces_the_token_projection(batch):
    """With share_att_key, query_proj / key_proj also project the relative position embeddings."""
    model = tiny_models(["deberta-v2"])["deberta-v2"]
    query = encoder_layers(model)[0].attention.self.query_proj
    calls = []
    query.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    tap = Tap(model, qkv_layers=[1])
    with torch.no_grad():
        model(**batch)
    assert calls == [(2, 7, 64), (1, 16, 64)]  # the token call, then the relative-position call
    assert tap.pop().qkv[1][0].shape == (2, 7, 64)


def _hf_rotary(model_type: str, model, q: torch.Tensor, k: torch.Tensor, layer: int):
    """Q, K ``[B, T, d]`` rotated by the transformers modeling code itself."""
    base, width = model.model, model.config.hidden_size // model.config.num_attention_heads
    positions = torch.arange(q.shape[1]).unsqueeze(0)
    if model_type == "modernbert":
        cos, sin = base.rotary_emb(q, positions, model.config.layer_types[layer - 1])
        rotate = modeling_modernbert.apply_rotary_pos_emb
    else:
        cos, sin = base.rotary_emb(q, positions)
        rotate = modeling_eurobert.apply_rotary_pos_emb

    def heads_first(x):
        return x.view(*x.shape[:2], -1, width).transpose(1, 2)

    q_rot, k_rot = rotate(heads_first(q), heads_first(k), cos, sin)
    return q_rot.transpose(1, 2).flatten(2), k_rot.transpose(1, 2).flatten(2)


@pytest.mark.parametrize("model_type", ["modernbert", "eurobert"])
def test_rotary_families_give_q_k_before_rotary_by_default_and_after_by_option(model_type, batch):
    model = tiny_models([model_type], layers=3)[model_type]
    before, after = Tap(model, qkv_layers=[1, 2]), None
    with torch.no_grad():
        model(**batch)
    before_qkv = before.pop().qkv
    before.remove()
    after = Tap(model, qkv_layers=[1, 2], rotary="after")
    with torch.no_grad():
        model(**batch)
    after_qkv = after.pop().qkv
    for layer in (1, 2):  # ModernBERT: a global (theta 160k) and a sliding-window (theta 10k) layer
        q, k, v = before_qkv[layer]
        want_q, want_k = _hf_rotary(model_type, model, q, k, layer)
        torch.testing.assert_close(after_qkv[layer][0], want_q)
        torch.testing.assert_close(after_qkv[layer][1], want_k)
        assert torch.equal(after_qkv[layer][2], v)  # V is never rotated
        assert not torch.allclose(after_qkv[layer][0], q)
    with pytest.raises(ValueError, match="'before' or 'after'"):
        Tap(model, qkv_layers=[1], rotary="inside")


def test_declared_attention_implementations_match_transformers():
    for family in FAMILIES:
        for model_type in family.model_types:
            cls = type(AutoModelForMaskedLM.from_config(tiny_family_config(model_type, layers=1)))
            assert ("sdpa" in family.attention) == bool(cls._supports_sdpa), model_type
            assert ("flash_attention_2" in family.attention) == bool(cls._supports_flash_attn), model_type
    assert attention_implementation(family_for_model_type("deberta-v2")) == "eager"
    assert attention_implementation(family_for_model_type("modernbert")) == "sdpa"
    with pytest.raises(ValueError, match="'sdpa' is not available for MPNet"):
        attention_implementation(family_for_model_type("mpnet"), "sdpa")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device and the flash-attn package"):
            attention_implementation(family_for_model_type("bert"), "flash_attention_2")


@pytest.mark.parametrize("model_type", TESTED)
def test_mlm_head_chain_gives_the_models_logits_on_selected_rows(model_type, batch):
    model = tiny_models([model_type])[model_type]
    positions = batch["attention_mask"].bool()
    positions[0, 0] = False
    with torch.no_grad():
        full = model(**batch).logits
        flat = positions.flatten().nonzero().squeeze(1)  # the rows, as the host selects them
        rows = mlm_logits_at(model, batch["input_ids"], batch["attention_mask"], flat)
    torch.testing.assert_close(rows, full[positions], rtol=1e-5, atol=1e-5)
    assert mlm_head(base_model(model)) is None


@pytest.mark.parametrize("model_type", TESTED)
@pytest.mark.parametrize("student_family", [None, "bert", "modernbert"])
def test_students_of_any_family_and_shape(model_type, student_family, caplog):
    teacher_config = tiny_family_config(model_type)
    with caplog.at_level(logging.WARNING, logger="transformers"):
        student = build_student([2, 2, 32, 48], teacher_config, family=student_family)
    assert not [r for r in caplog.records if "_token_id" in r.getMessage()]  # no id outside the vocabulary
    expected = student_family or model_type
    assert student.config.model_type == expected
    assert spec_of(student.config).as_list() == [2, 2, 32, 48]
    assert student.config.vocab_size == teacher_config.vocab_size
    assert student.config.pad_token_id == teacher_config.pad_token_id
    with torch.no_grad():
        student(input_ids=torch.randint(5, 100, (1, 6)))


def test_modernbert_student_config_makes_the_last_layer_global():
    """The config error of the issue (layer_types of the teacher's depth) is gone, and the layer MiniLMv2
    reads by default is a global one."""
    teacher = tiny_family_config("modernbert", layers=3)
    assert sliding_window_layers(teacher) == (2,)
    for layers, sliding in [(1, ()), (2, (1,)), (3, (2,)), (4, (1, 3)), (6, (1, 3, 5))]:  # every 2nd
        student = build_student([layers, 2, 32, 48], teacher).config
        assert sliding_window_layers(student) == sliding, layers
    bert_teacher = tiny_family_config("bert")
    student = build_student([4, 2, 32, 48], bert_teacher, family="modernbert").config
    assert student.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]


def test_eurobert_student_keeps_the_teachers_kv_grouping():
    teacher = tiny_family_config("eurobert")  # 4 heads, 2 K/V heads: groups of 2
    assert build_student([2, 8, 64, 48], teacher).config.num_key_value_heads == 4
    assert build_student([2, 3, 48, 48], teacher).config.num_key_value_heads == 3  # 2 does not divide 3
    assert build_student([2, 8, 64, 48], teacher).config.head_dim == 8


def test_deberta_and_electra_students_fit_their_width():
    deberta = build_student([2, 2, 32, 48], tiny_family_config("deberta-v2"), with_mlm_head=False)
    assert deberta.config.pooler_hidden_size == 32
    assert deberta.config.position_buckets == 8  # the teacher's relative attention, kept
    of_bert = build_student([2, 2, 32, 48], tiny_family_config("bert"), family="deberta-v2").config
    assert of_bert.relative_attention and of_bert.position_buckets == 256  # DeBERTa-v3's, not v2's defaults
    assert not of_bert.position_biased_input
    electra_teacher = tiny_family_config("electra")  # factorised: 32 -> 64
    assert build_student([2, 2, 48, 48], electra_teacher).config.embedding_size == 32
    plain = build_student([2, 2, 48, 48], tiny_family_config("bert"), family="electra")
    assert plain.config.embedding_size == 48 and not hasattr(plain.electra, "embeddings_project")


@pytest.mark.parametrize("model_type", TESTED)
def test_init_from_teacher_copies_every_tensor_outside_the_layers(model_type):
    from pretrain_distill.models import copy_from_teacher

    torch.manual_seed(0)
    teacher = AutoModel.from_config(
        tiny_family_config(model_type, layers=4)
    )  # no MLM head, like a hub encoder
    if hasattr(teacher, "pooler"):
        teacher.pooler = None
    student = build_student([2, 4, 64, 96], teacher.config)
    new = copy_from_teacher(student, teacher, [2, 4], with_head=False)
    t_state = teacher.state_dict()
    prefix = student.base_model_prefix + "."
    encoder = {id(t): k for k, t in student.state_dict(keep_vars=True).items() if k.startswith(prefix)}
    for name, param in student.named_parameters():  # a tied parameter is listed once, under any of its names
        if name in new:
            assert id(param) not in encoder, f"{name}: an encoder parameter left new"
            continue
        relative = encoder[id(param)].removeprefix(prefix)
        layers = family_for_model_type(model_type).layers + "."
        if relative.startswith(layers):
            index, _, rest = relative[len(layers) :].partition(".")
            relative = f"{layers}{[1, 3][int(index)]}.{rest}"
        assert torch.equal(param, t_state[relative]), name
    assert new and all(not n.startswith(prefix) for n in new)  # the MLM head, which the teacher lacks


def test_init_from_teacher_reaches_the_parts_outside_the_layers():
    """DeBERTa's rel_embeddings, ModernBERT's final norm, ELECTRA's embeddings_project, EuroBERT's norm."""
    outside = {
        "deberta-v2": "encoder.rel_embeddings.weight",
        "modernbert": "final_norm.weight",
        "electra": "embeddings_project.weight",
        "eurobert": "norm.weight",
        "mpnet": "encoder.relative_attention_bias.weight",
    }
    for model_type, key in outside.items():
        teacher = tiny_models([model_type], layers=2)[model_type]
        with torch.no_grad():
            base_model(teacher).state_dict(keep_vars=True)[key].add_(1.0)  # differ from any fresh init
        student = build_student([1, 4, 64, 96], teacher.config, init="teacher", teacher=teacher)
        assert torch.equal(base_model(student).state_dict()[key], base_model(teacher).state_dict()[key]), key


def test_init_from_teacher_refuses_another_family():
    teacher = tiny_models(["bert"])["bert"]
    with pytest.raises(ValueError, match="init='teacher' needs the teacher's family"):
        build_student([1, 4, 64, 96], teacher.config, init="teacher", teacher=teacher, family="roberta")


def test_relation_terms_refuse_a_sliding_window_layer_naming_the_global_ones():
    teacher = tiny_models(["modernbert"], layers=3)["modernbert"]  # global, sliding, global
    student = build_student([2, 2, 32, 48], teacher.config)
    cfg = ObjectiveConfig(weights={"minilmv2": 1.0}, teacher_layer="L_T-1", relation_heads=2)
    with pytest.raises(ValueError, match=r"teacher layer 2, a sliding-window.*global layers are \[1, 3\]"):
        Distiller(cfg, student, teacher)
    cfg = ObjectiveConfig(weights={"direct_minilm": 1.0}, teacher_layer="L_T-1")
    with pytest.raises(ValueError, match="sliding-window"):
        Distiller(cfg, student, teacher)
    Distiller(
        ObjectiveConfig(weights={"minilmv2": 1.0}, teacher_layer="L_T", relation_heads=2), student, teacher
    )


def test_relation_heads_must_divide_each_of_q_k_v_widths():
    teacher = tiny_models(["eurobert"], layers=2)["eurobert"]  # Q 64 wide, K / V 32 wide
    student = build_student([1, 4, 64, 96], teacher.config)
    cfg = ObjectiveConfig(weights={"minilmv2": 1.0}, teacher_layer="L_T", relation_heads=64)
    with pytest.raises(ValueError, match=r"relation_heads=64 must divide the student's K width 32"):
        Distiller(cfg, student, teacher)
    distiller = Distiller(
        ObjectiveConfig(weights={"direct_minilm": 1.0}, teacher_layer="L_T"), student, teacher
    )
    assert [tuple(w.shape) for w in distiller.direct_maps.weights] == [(4, 16, 16), (4, 8, 8), (4, 8, 8)]


def test_unknown_architectures_are_one_line_errors_naming_the_families():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(
        UnsupportedArchitectureError, match=r"model_type 'gpt2'.*supported: bert, .*modernbert"
    ):
        Tap(gpt2, hidden_layers=[1])
    with pytest.raises(UnsupportedArchitectureError, match="did you mean 'modernbert'"):
        family_for_model_type("modernbrt")
    with pytest.raises(UnsupportedArchitectureError, match="did you mean 'deberta-v2'"):
        build_student("3L", tiny_family_config("bert"), family="deberta")


# ------------------------------------------------------------------------------------ docs/models.md

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def support_matrix() -> str:
    """The support matrix of docs/models.md, rendered from the family entries (every claim in it is run
    end to end per family by tests/e2e/test_families.py)."""

    def code(names) -> str:
        return " -> ".join(f"`{n}`" for n in names)

    lines = [
        "| family | model types | teacher | student | HS | MiniLMv2, DirectMiniLM | OD: MLM head chain | "
        "attention | Q/K/V | layout notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FAMILIES:
        qkv = f"`{f.layers}[i].{f.qkv.holder}.{{{','.join(f.qkv.projections)}}}`"
        notes = [f"pre-LN, final norm `{f.final_norm}`" if f.final_norm else "post-LN"]
        notes += [f"hidden state 0 after `{f.embeddings[0]}`" if len(f.embeddings) > 1 else ""]
        notes += [f"layer 1 after `{f.first_layer_output}` if present" if f.first_layer_output else ""]
        notes += ["fused Q/K/V" if len(f.qkv.projections) == 1 else ""]
        notes += [
            "rotary Q/K" if f.qkv.rotary_argument else "",
            "grouped K/V" if f.qkv.kv_heads_field else "",
        ]
        notes += ["sliding-window layers" if f.sliding_window else ""]
        relations = "global layers only" if f.sliding_window else "yes"
        lines.append(
            f"| {f.name} | {', '.join(f'`{t}`' for t in f.model_types)} | yes | yes | yes | {relations} | "
            f"{code(f.mlm_head)} | {', '.join(f.attention)} | {qkv} | {', '.join(x for x in notes if x)} |"
        )
    return "\n".join(lines)


def test_docs_support_matrix_is_the_family_table():
    text = DOCS.read_text()
    start, end = "<!-- support-matrix: tests/models/test_families.py -->\n", "\n<!-- /support-matrix -->"
    assert start in text and end in text, "docs/models.md lost its support-matrix markers"
    documented = text.split(start, 1)[1].split(end, 1)[0]
    assert documented == support_matrix(), "docs/models.md: paste support_matrix() between the markers"
