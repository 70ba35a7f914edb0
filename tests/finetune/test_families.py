"""The fine-tuning stage's layout-dependent pieces, on every encoder family: ILD-RTC's reused teacher
classifier (``classification_head``, also in its layerless copy ``head_only``) gives the classifier's own
logits from its encoder states, and ``student_init: teacher_layers`` copies every encoder tensor."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from finetune.modeling import classification_head, head_only, init_from_teacher_layers
from pretrain_distill.models.families import encoder_layers
from tests.models.conftest import MODEL_TYPES, tiny_family_config

#: Poolings that read the attention mask, so a padded batch checks they get it.
MASKED_POOLING = {"modernbert": {"classifier_pooling": "mean"}, "eurobert": {"classifier_pooling": "late"}}


def classifier(model_type: str, layers: int, seed: int):
    torch.manual_seed(seed)
    config = tiny_family_config(model_type, layers=layers, num_labels=3, **MASKED_POOLING.get(model_type, {}))
    return AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reused_classifier_gives_the_models_own_logits(model_type):
    teacher = classifier(model_type, 2, seed=0)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    with torch.no_grad():
        logits = teacher(input_ids=ids, attention_mask=mask).logits
        hidden = teacher.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(classification_head(teacher)(hidden, mask), logits)
        torch.testing.assert_close(classification_head(head_only(teacher))(hidden, mask), logits)
    assert teacher.base_model is getattr(teacher, teacher.base_model_prefix)  # the encoder is put back


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_teacher_layers_init_copies_every_encoder_tensor(model_type):
    teacher, student = classifier(model_type, 3, seed=0), classifier(model_type, 2, seed=1)
    init_from_teacher_layers(student, teacher)
    t_state = teacher.base_model.state_dict()
    for key, value in student.base_model.state_dict().items():
        assert torch.equal(value, t_state[key]), key  # layers 1..2 and everything outside the layers
    assert len(encoder_layers(student)) == 2
    with pytest.raises(ValueError, match="teacher's family and layer shapes: cannot copy"):
        init_from_teacher_layers(
            AutoModelForSequenceClassification.from_config(
                tiny_family_config(model_type, layers=2, hidden=32)
            ),
            teacher,
        )
