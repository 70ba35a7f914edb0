"""Models for the fine-tuning stage: load a classifier from any encoder directory.

``load_classifier`` uses ``AutoModelForSequenceClassification``: a directory holding only an encoder
(``BertModel`` such as all-MiniLM-L6-v2, or an exported ``*ForMaskedLM`` student) gets a freshly
initialised classification head (and pooler), a fine-tuned directory keeps its own. A directory written
by ILD-RTC with a student narrower than its teacher loads as an :class:`RTCClassifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from finetune.tasks import TaskSpec
from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.console import loading_quietly
from pretrain_distill.core.tokenizer_loading import load_tokenizer as checked_tokenizer
from pretrain_distill.models.families import derived_config, encoder_layers, family_of
from pretrain_distill.models.students import copy_from_teacher


def load_tokenizer(path: str, model: str | None = None):
    """The tokenizer in ``path`` (``minilm``: the embedded teacher's), checked against the model in
    ``model`` (default: ``path``)."""
    return checked_tokenizer(resolve_model_path(path), resolve_model_path(model) if model else None)


def load_classifier(path: str, spec: TaskSpec) -> PreTrainedModel | RTCClassifier:
    """A sequence classifier for ``spec`` from the model directory ``path`` (head added if missing)."""
    path = resolve_model_path(path)
    if (Path(path) / RTC_PROJECTOR).is_file():
        model = RTCClassifier.from_pretrained(path)
        if model.num_labels != spec.num_labels:
            raise ValueError(
                f"{path} is a classifier with {model.num_labels} labels, task {spec.name} has {spec.num_labels}"
            )
        return model
    config = AutoConfig.from_pretrained(path)
    kwargs: dict = {"num_labels": spec.num_labels}
    if spec.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
        kwargs["id2label"] = dict(enumerate(spec.labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(spec.labels)}
    if (
        getattr(config, "num_labels", None) not in (None, spec.num_labels)
        and config.architectures
        and any(a.endswith("ForSequenceClassification") for a in config.architectures)
    ):
        raise ValueError(
            f"{path} is a classifier with {config.num_labels} labels, task {spec.name} has {spec.num_labels}"
        )
    with loading_quietly():  # the new head's initialisation is expected
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


class _GivenStates(nn.Module):
    """Stands in for a classifier's encoder: returns the hidden states it holds (and the encoder's own
    pooler over them, for families whose classifier reads ``pooler_output``)."""

    def __init__(self, states: torch.Tensor, pooler: nn.Module | None):
        super().__init__()
        self.states, self.pooler = states, pooler

    def forward(self, *_args, **_kwargs) -> BaseModelOutputWithPooling:
        pooled = self.pooler(self.states) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=self.states, pooler_output=pooled)


def classification_head(model: PreTrainedModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The part of ``model`` after its encoder: ``(last hidden states [B, T, d], attention mask [B, T])`` ->
    logits. Used by ILD-RTC to run the teacher's classifier on (projected) student states.

    It is the model's own forward with its encoder replaced, for the call, by the given states: every
    family's head runs as written (BERT's pooler + classifier, RoBERTa's dense + out_proj on [CLS],
    ModernBERT's and EuroBERT's pooling over the attention mask, DeBERTa's context pooler, ...)."""
    prefix = model.base_model_prefix

    def head(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        encoder = getattr(model, prefix)
        setattr(model, prefix, _GivenStates(hidden, getattr(encoder, "pooler", None)))
        try:
            ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)  # not read
            return model(input_ids=ids, attention_mask=attention_mask).logits
        finally:
            setattr(model, prefix, encoder)

    return head


def head_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights of ``model``'s classification head: everything outside the encoder, plus its pooler."""
    prefix = model.base_model_prefix + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix) or ".pooler." in k}


def head_only(teacher: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``teacher`` that keeps its classification head and drops the rest: no layers (one for
    families with per-layer attention types, whose configs cannot describe zero), a vocabulary of its special
    ids only (the head weights are the teacher's; the encoder parts left are unused stubs)."""
    family = family_of(teacher.config)
    special = [
        v for k, v in teacher.config.to_dict().items() if k.endswith("_token_id") and isinstance(v, int)
    ]
    depth = 1 if family.sliding_window else 0  # a 0-layer ModernBERT config fails validation (5.25)
    changes = {family.shape_fields[0]: depth, "vocab_size": max([0, *special]) + 1}
    skeleton = AutoModelForSequenceClassification.from_config(derived_config(family, changes, teacher.config))
    missing = set(head_state(teacher)) - set(skeleton.state_dict())
    if missing:
        raise ValueError(f"cannot hold {type(teacher).__name__}'s head: no {sorted(missing)[0]}")
    skeleton.load_state_dict(head_state(teacher), strict=False)
    return skeleton.eval().requires_grad_(False)


RTC_PROJECTOR = "rtc_projector.safetensors"
RTC_TEACHER_HEAD = "rtc_teacher_head"


class RTCClassifier(nn.Module):
    """ILD-RTC's student when it is narrower than its teacher (ILD-RTC section 3.1): the student encoder,
    a linear projector to the teacher's width, and the teacher's classifier reused as it is (frozen).

    ``save_pretrained(dir)`` writes the student encoder as a Hugging Face model, ``rtc_projector.safetensors``
    and ``rtc_teacher_head/`` (the teacher's head in a layerless copy, see :func:`head_only`);
    ``from_pretrained(dir)`` (and so ``load_classifier``) reads them back into the same logits.
    """

    def __init__(self, student: PreTrainedModel, projector: nn.Linear, teacher_head: PreTrainedModel):
        super().__init__()
        self.student, self.projector, self.teacher_head = student, projector, teacher_head
        self.config = student.config  # the student's; num_labels is the teacher's too (checked at training)
        self.num_labels = teacher_head.config.num_labels

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, **_
    ) -> SequenceClassifierOutput:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.student.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        head = classification_head(self.teacher_head)
        return SequenceClassifierOutput(logits=head(self.projector(hidden.last_hidden_state), attention_mask))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.student.save_pretrained(path)
        save_file(self.projector.state_dict(), str(path / RTC_PROJECTOR))
        self.teacher_head.save_pretrained(path / RTC_TEACHER_HEAD)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> RTCClassifier:
        path = Path(path)
        state = load_file(str(path / RTC_PROJECTOR))
        projector = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        projector.load_state_dict(state)
        with loading_quietly():
            student = AutoModelForSequenceClassification.from_pretrained(path)
        teacher_head = AutoModelForSequenceClassification.from_pretrained(path / RTC_TEACHER_HEAD)
        return cls(student, projector, teacher_head.eval().requires_grad_(False))


def init_from_teacher_layers(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Copy the teacher's first M layers into the M-layer student, and every other encoder tensor of the
    teacher (embeddings, final norms, relative-position tables, pooler...): same family and widths."""
    s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
    if len(s_layers) > len(t_layers):
        raise ValueError(f"student has {len(s_layers)} layers, the teacher only {len(t_layers)}")
    try:
        copy_from_teacher(student, teacher, range(1, len(s_layers) + 1), with_head=False)
    except ValueError as err:
        raise ValueError(
            f"student_init: teacher_layers needs the teacher's family and layer shapes: {err}"
        ) from err
