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
from transformers.modeling_outputs import SequenceClassifierOutput

from finetune.tasks import TaskSpec
from pretrain_distill.core.assets import resolve_model_path
from pretrain_distill.core.console import loading_quietly
from pretrain_distill.core.tokenizer_loading import load_tokenizer as checked_tokenizer
from pretrain_distill.models.families import encoder_layers


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


def classification_head(model: PreTrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The part of ``model`` after its encoder: last hidden states ``[B, T, d]`` -> logits.

    BERT-style models pool the first token (``pooler``) then apply ``classifier``; RoBERTa-style heads
    (``classifier.dense`` + ``classifier.out_proj``) take the sequence. Used by ILD-RTC to run the
    teacher's classifier on (projected) student states."""
    pooler = getattr(model.base_model, "pooler", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear) and pooler is not None:
        dropout = getattr(model, "dropout", nn.Identity())
        return lambda hidden: classifier(dropout(pooler(hidden)))
    if classifier is not None and hasattr(classifier, "out_proj"):
        return classifier
    raise ValueError(
        f"{type(model).__name__}: reusing its classifier is supported for BERT/RoBERTa-style heads"
    )


def head_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights of ``model``'s classification head: everything outside the encoder, plus its pooler."""
    prefix = model.base_model_prefix + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix) or ".pooler." in k}


def head_only(teacher: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``teacher`` that keeps its classification head and drops the rest: no layers, a
    vocabulary of its special ids only (the head weights are the teacher's; the encoder parts left are
    unused stubs)."""
    config = teacher.config.to_dict()
    special = [config.get(f"{t}_token_id") for t in ("pad", "bos", "eos")]
    config.update(num_hidden_layers=0, vocab_size=max([1] + [i for i in special if isinstance(i, int)]) + 1)
    skeleton = AutoModelForSequenceClassification.from_config(type(teacher.config).from_dict(config))
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
        return SequenceClassifierOutput(logits=head(self.projector(hidden.last_hidden_state)))

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
        with loading_quietly():  # the new head's initialisation is expected
            student = AutoModelForSequenceClassification.from_pretrained(path)
        teacher_head = AutoModelForSequenceClassification.from_pretrained(path / RTC_TEACHER_HEAD)
        return cls(student, projector, teacher_head.eval().requires_grad_(False))


def init_from_teacher_layers(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Copy the teacher's embeddings and first M layers into the M-layer student (same widths)."""
    s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
    if len(s_layers) > len(t_layers):
        raise ValueError(f"student has {len(s_layers)} layers, the teacher only {len(t_layers)}")
    try:
        student.base_model.embeddings.load_state_dict(teacher.base_model.embeddings.state_dict())
        for s_layer, t_layer in zip(s_layers, t_layers):
            s_layer.load_state_dict(t_layer.state_dict())
    except RuntimeError as err:
        raise ValueError(f"student_init: teacher_layers needs the teacher's layer shapes: {err}") from err
