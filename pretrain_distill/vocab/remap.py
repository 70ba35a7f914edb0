"""A pruned vocabulary on the model side: the id remap on the device, OD's restricted teacher logits, and
the student's embedding (and MLM head) cut to the kept rows.

The teacher keeps reading the original ids; the student reads ``table[ids]`` (a gather on the batch's
device: no host work, no synchronisation). Cutting a student keeps, for each kept token, the row it had:
with ``student.init: teacher`` the teacher's embedding row (and MLM decoder row and bias), with random
init a random row as before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from pretrain_distill.vocab.selection import StudentVocab

#: Config fields that hold token ids (remapped to the student's ids when the vocabulary is cut).
TOKEN_ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "unk_token_id",
)


class VocabIndex(nn.Module):
    """Device-side lookups of a :class:`StudentVocab` (non-persistent buffers: they follow ``.to()`` and
    stay out of checkpoints, which hold the vocabulary as ``student_vocab.json``)."""

    def __init__(self, vocab: StudentVocab) -> None:
        super().__init__()
        self.vocab = vocab
        self.register_buffer("table", torch.from_numpy(vocab.lookup()), persistent=False)
        self.register_buffer("kept", torch.tensor(vocab.kept, dtype=torch.long), persistent=False)

    def student_ids(self, teacher_ids: Tensor) -> Tensor:
        """Teacher ids -> student ids (unkept -> the student's unknown id), any shape."""
        return self.table[teacher_ids]

    def student_labels(self, labels: Tensor) -> Tensor:
        """MLM labels in teacher ids (``-100`` = ignored) -> student ids, ``-100`` kept."""
        return torch.where(labels >= 0, self.table[labels.clamp(min=0)], labels)

    def restrict(self, teacher_logits: Tensor) -> Tensor:
        """``[N, V_T]`` teacher logits -> ``[N, K]``: the kept tokens' logits in student-id order. A softmax
        of the result is the teacher's distribution restricted to the kept tokens and renormalised."""
        return teacher_logits.index_select(-1, self.kept)


def _remap_config_ids(model: PreTrainedModel, table: list[int]) -> None:
    for name in TOKEN_ID_FIELDS:
        value = getattr(model.config, name, None)
        if isinstance(value, int) and 0 <= value < len(table):
            setattr(model.config, name, table[value])


def cut_student(model: PreTrainedModel, vocab: StudentVocab) -> PreTrainedModel:
    """Keep only ``vocab``'s rows of a full-vocabulary student's input embedding and, when it has one,
    its MLM decoder and bias (tied weights stay tied); the config's size and token ids follow. In place.

    A student that already has ``vocab.size`` rows (a later stage from a pruned student) is left as is.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if rows == vocab.size:
        return model
    if rows != vocab.teacher_size:
        raise ValueError(
            f"the student has {rows} embedding rows: neither the teacher's {vocab.teacher_size} nor the "
            f"pruned vocabulary's {vocab.size}"
        )
    index = torch.tensor(vocab.kept, dtype=torch.long)
    table = vocab.lookup().tolist()
    pad = model.config.pad_token_id
    if isinstance(pad, int) and table[pad] != pad:  # padding_idx and RoBERTa's positions count from it
        raise ValueError(f"the pruned vocabulary moves the padding token from id {pad} to {table[pad]}")
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight[index].clone()
        head = model.get_output_embeddings()
        decoder = head.weight[index].clone() if head is not None else None
        bias = head.bias[index].clone() if head is not None and head.bias is not None else None
        model.resize_token_embeddings(vocab.size, mean_resizing=False)
        model.get_input_embeddings().weight.copy_(embedding)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.copy_(decoder)
            if bias is not None:
                head.bias.copy_(bias)
    _remap_config_ids(model, table)
    return model
