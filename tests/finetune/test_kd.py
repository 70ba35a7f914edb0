"""The task-distillation mechanism on tiny models: loss terms equal an independent computation, each
method lowers its loss, RAIL-KD redraws its layers, ILD-RTC reuses the frozen teacher classifier."""

from __future__ import annotations

import copy

import pytest
import torch

from finetune.finetune_config import DistillConfig
from finetune.kd_losses import kd_logit_loss, mean_pool, normalized_squared_distance, task_loss
from finetune.modeling import init_from_teacher_layers
from finetune.objectives import METHOD_DEFAULTS, FinetuneObjective, TaskDistiller, last_layers, skip_layers

from .conftest import tiny_classifier

METHODS = ["vanilla", "pkd", "rail_l", "rail_c", "ild_rtc"]
VOCAB = 512


@pytest.fixture(scope="module")
def batch(tokenizer):
    texts = [
        "a great movie",
        "an awful long dull film with a bad plot",
        "fun",
        "the story was good and short",
    ]
    enc = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    enc["input_ids"] = enc["input_ids"] % VOCAB  # tiny vocabulary: fast steps, same structure
    return enc | {"labels": torch.tensor([1, 0, 1, 1])}


def make(method: str, student_layers: int = 3, student_hidden: int = 32, **kw) -> TaskDistiller:
    teacher = tiny_classifier(4, 64, seed=1, vocab_size=VOCAB)
    student = tiny_classifier(student_layers, student_hidden, seed=2, vocab_size=VOCAB)
    return TaskDistiller(DistillConfig(method=method, **kw), student, teacher, seed=7)


def expected_terms(d: TaskDistiller, batch: dict) -> dict[str, float]:
    """The method's loss terms recomputed from raw model outputs, outside the mechanism."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t = d.teacher(**inputs, output_hidden_states=True)
        s = d.student(**inputs, output_hidden_states=True)
        if d.method == "ild_rtc":  # teacher pooler + classifier on the projected last student layer
            logits = d.teacher.classifier(d.teacher.bert.pooler(d.projector(s.hidden_states[-1])))
        else:
            logits = s.logits
        w = d.weights
        out = {"ce": task_loss(logits, batch["labels"]).item()}
        out["kd"] = kd_logit_loss(logits, t.logits, w.temperature, w.kd_t2).item()
        m = d.num_student_layers
        if d.method in ("pkd", "ild_rtc"):
            pairs = [
                (d.projector(s.hidden_states[i][:, 0]), t.hidden_states[j][:, 0])
                for i, j in zip(range(1, m), d.teacher_layers)
            ]
            out["layer"] = sum(normalized_squared_distance(a, b).item() for a, b in pairs)
        elif d.method == "rail_l":
            mask = inputs["attention_mask"]
            out["layer"] = sum(
                normalized_squared_distance(
                    d.student_maps[k](mean_pool(s.hidden_states[i], mask)),
                    d.teacher_maps[k](mean_pool(t.hidden_states[j], mask)),
                ).item()
                for k, (i, j) in enumerate(zip(range(1, m), d.teacher_layers))
            )
        elif d.method == "rail_c":
            mask = inputs["attention_mask"]
            hs = torch.cat([mean_pool(s.hidden_states[i], mask) for i in range(1, m)], -1)
            ht = torch.cat([mean_pool(t.hidden_states[j], mask) for j in d.teacher_layers], -1)
            out["layer"] = normalized_squared_distance(d.student_maps[0](hs), d.teacher_maps[0](ht)).item()
        out["loss"] = (
            w.ce_weight * out["ce"] + w.kd_weight * out["kd"] + w.layer_weight * out.get("layer", 0.0)
        )
    return out


@pytest.mark.parametrize("method", METHODS)
def test_terms_match_independent_computation(method, batch):
    d = make(method).eval()
    with torch.no_grad():
        terms = d(batch)
    expected = expected_terms(d, batch)
    assert set(terms) == set(expected)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert terms["kd"].item() > 0 and (method == "vanilla" or terms["layer"].item() > 0)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_loss(method, batch):
    torch.manual_seed(0)
    d = make(method)
    d.train()
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(10):
        loss = d(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    d.eval()
    with torch.no_grad():
        final = d(batch)["loss"].item()
    assert final < 0.8 * losses[0], (losses, final)


def test_method_defaults_and_overrides():
    d = make("ild_rtc", ce_weight=0.2, layer_weight=500.0)
    assert (d.weights.ce_weight, d.weights.kd_weight, d.weights.layer_weight) == (0.2, 0.5, 500.0)
    assert d.weights.temperature == 10.0 and d.weights.kd_t2 is False
    assert METHOD_DEFAULTS["rail_c"]["ce_weight"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="needs 1 < M <= N"):
        make("pkd", student_layers=1)


def test_pkd_and_uniform_mappings():
    assert skip_layers(12, 6) == [2, 4, 6, 8, 10]  # PKD-skip, ILD-RTC g(m) = floor(N/M) m
    assert skip_layers(12, 4) == [3, 6, 9]
    assert last_layers(12, 6) == [7, 8, 9, 10, 11]
    assert make("pkd", pkd_strategy="last").teacher_layers == [2, 3]
    assert make("pkd").teacher_layers == [1, 2]  # floor(4/3) * m


def test_rail_redraws_sorted_intermediate_layers_per_epoch():
    d = make("rail_l")
    draws = []
    for epoch in range(12):
        d.set_epoch(epoch)
        draws.append(tuple(d.teacher_layers))
        assert list(draws[-1]) == sorted(set(draws[-1])) and len(draws[-1]) == 2
        assert all(1 <= j <= 3 for j in draws[-1])  # intermediate teacher layers 1..N-1
    assert len(set(draws)) > 1
    again = make("rail_l")
    again.set_epoch(5)
    assert tuple(again.teacher_layers) == draws[5]  # deterministic in (seed, epoch)


def test_ild_rtc_reuses_the_frozen_teacher_classifier(batch):
    d = make("ild_rtc", student_layers=2, student_hidden=32)
    assert isinstance(d.projector, torch.nn.Linear) and d.projector.in_features == 32
    head_before = copy.deepcopy(d.teacher.classifier.state_dict() | d.teacher.bert.pooler.state_dict())
    trainable = {id(p) for p in d.parameters() if p.requires_grad}
    assert not any(id(p) in trainable for p in d.teacher.parameters())
    assert all(not p.requires_grad for p in d.teacher.parameters())
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        d(batch)["loss"].backward()
        opt.step()
    head_after = d.teacher.classifier.state_dict() | d.teacher.bert.pooler.state_dict()
    assert all(torch.equal(head_before[k], head_after[k]) for k in head_before)
    assert not any(k.startswith("teacher") for k in d.state_dict())

    same = make("ild_rtc", student_layers=2, student_hidden=64).eval()
    assert isinstance(same.projector, torch.nn.Identity)
    student = same.export()
    assert torch.equal(student.classifier.weight, same.teacher.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, same.teacher.bert.pooler.dense.weight)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert torch.allclose(student(**inputs).logits, same.logits(batch), atol=1e-6)


def test_init_from_teacher_layers_copies_first_layers():
    teacher, student = (
        tiny_classifier(4, 64, seed=1, vocab_size=VOCAB),
        tiny_classifier(2, 64, seed=2, vocab_size=VOCAB),
    )
    init_from_teacher_layers(student, teacher)
    for i in range(2):
        for (k, a), (_, b) in zip(
            student.bert.encoder.layer[i].state_dict().items(),
            teacher.bert.encoder.layer[i].state_dict().items(),
        ):
            assert torch.equal(a, b), k
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    with pytest.raises(ValueError, match="layer shapes"):
        init_from_teacher_layers(tiny_classifier(2, 32, vocab_size=VOCAB), teacher)


def test_finetune_objective_is_task_loss(batch):
    model = tiny_classifier(2, 32, vocab_size=VOCAB).eval()
    obj = FinetuneObjective(model)
    terms = obj(batch)
    with torch.no_grad():
        expected = task_loss(
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, batch["labels"]
        )
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_mismatched_vocabularies_are_rejected():
    teacher = tiny_classifier(4, 64, seed=1, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="vocab"):
        TaskDistiller(DistillConfig(method="vanilla"), tiny_classifier(2, 32, vocab_size=VOCAB + 1), teacher)


def test_ild_rtc_narrower_student_exports_a_classifier_that_loads_back(batch, tmp_path):
    """Student narrower than the teacher: the export (student + projector + the teacher's head) gives the
    training-time logits, and so does the directory it saves, read by load_classifier."""
    from finetune.modeling import RTCClassifier, load_classifier
    from finetune.tasks import get_task

    d = make("ild_rtc", student_layers=2, student_hidden=32)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.5)
    d(batch)["loss"].backward()
    opt.step()  # the projector and the student moved away from their initialisation
    d.eval()
    exported = d.export()
    assert isinstance(exported, RTCClassifier)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        expected = d.logits(batch)
        torch.testing.assert_close(exported(**inputs).logits, expected)
        exported.save_pretrained(tmp_path / "model")
        loaded = load_classifier(str(tmp_path / "model"), get_task("sst2")).eval()
        assert isinstance(loaded, RTCClassifier)
        torch.testing.assert_close(loaded(**inputs).logits, expected)
    assert sum(p.numel() for p in loaded.teacher_head.bert.encoder.parameters()) == 0  # head only
    with pytest.raises(ValueError, match="2 labels, task mnli has 3"):
        load_classifier(str(tmp_path / "model"), get_task("mnli"))


def test_ild_rtc_narrower_roberta_student_exports_exactly(tmp_path):
    """RoBERTa's head (dense + out_proj on <s>) survives the head-only copy too."""
    from finetune.modeling import RTCClassifier

    def roberta(hidden: int, layers: int):
        return tiny_classifier(layers, hidden, num_labels=3, vocab_size=VOCAB, model_type="roberta")

    d = TaskDistiller(DistillConfig(method="ild_rtc"), roberta(32, 2), roberta(64, 4), seed=1).eval()
    ids = torch.randint(3, VOCAB, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        d.export().save_pretrained(tmp_path)
        loaded = RTCClassifier.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(**batch).logits, d.logits(batch))
    assert loaded.teacher_head.config.num_hidden_layers == 0
