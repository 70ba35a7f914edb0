"""The ``sentence-transformers`` format: the base encoder (see :mod:`.encoder`) plus the module files
that ``sentence_transformers.SentenceTransformer(dir)`` reads: ``modules.json`` (Transformer -> Pooling
[-> Normalize]), ``1_Pooling/config.json`` and ``sentence_bert_config.json``.

The pooling is the teacher's when the teacher is itself a sentence-transformers model (all-MiniLM-L6-v2:
mean pooling, then L2 normalisation; its maximum sequence length), otherwise mean pooling without
normalisation. Written as JSON here, so exporting does not need the sentence-transformers package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from pretrain_distill.export.encoder import write_transformers
from pretrain_distill.export.source import ExportSource

_MODULES = "sentence_transformers.models"
MEAN_POOLING = {
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def sentence_layout(teacher_dir: Path | None, hidden: int, max_positions: int) -> dict[str, Any]:
    """Pooling settings, normalisation and max sequence length: the teacher's where it has them."""
    teacher_dir = teacher_dir if teacher_dir is not None else Path("/nonexistent")
    modules = _read_json(teacher_dir / "modules.json") or []
    pooling_entry = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    pooling = dict(MEAN_POOLING)
    if pooling_entry is not None:
        pooling = _read_json(teacher_dir / pooling_entry["path"] / "config.json") or pooling
    bert_config = _read_json(teacher_dir / "sentence_bert_config.json") or {}
    return {
        "pooling": {**pooling, "word_embedding_dimension": hidden},
        "normalize": any(m.get("type", "").endswith(".Normalize") for m in modules),
        "max_seq_length": min(int(bert_config.get("max_seq_length", max_positions)), max_positions),
        "do_lower_case": bool(bert_config.get("do_lower_case", False)),
    }


def write_sentence_transformers(source: ExportSource, out: Path, teacher_dir: Path | None) -> PreTrainedModel:
    """Write the base encoder and the sentence-transformers module files into ``out``."""
    model = write_transformers(source, out, with_mlm_head=False)
    layout = sentence_layout(teacher_dir, model.config.hidden_size, model.config.max_position_embeddings)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{_MODULES}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{_MODULES}.Pooling"},
    ]
    if layout["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{_MODULES}.Normalize"})
        (out / "2_Normalize").mkdir()
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(layout["pooling"], indent=2) + "\n")
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    sentence_bert = {"max_seq_length": layout["max_seq_length"], "do_lower_case": layout["do_lower_case"]}
    (out / "sentence_bert_config.json").write_text(json.dumps(sentence_bert, indent=2) + "\n")
    return model
