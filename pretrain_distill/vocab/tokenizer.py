"""The pruned student's tokenizer: the teacher's, rewritten so that it gives the student's ids.

For any text, ``student_tokenizer(text).input_ids == vocab.remap(teacher_tokenizer(text).input_ids)``:
the text is split exactly as the teacher's tokenizer splits it, then each token gets its student id, an
unkept token the unknown id. The rewrite keeps every token string of the model (so the splitting is
unchanged) and points the unkept ones at the unknown id; special tokens, the post-processor's template
ids and the padding id are remapped.

That is possible where a token's id is a plain lookup after the split: WordPiece (BERT, DistilBERT,
ELECTRA, MPNet) and WordLevel. BPE (RoBERTa, GPT-2 style) and Unigram (SentencePiece: XLM-R, CamemBERT)
cannot be rewritten so: BPE's merges are keyed by the ids of the pieces they join, so pieces sharing the
unknown id would merge wrongly, and a Unigram piece's id is its position in the list, so two pieces
cannot share one. A run with such a teacher is refused at start-up (:func:`check_rewritable`) instead of
exporting a tokenizer that disagrees with what the student was trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pretrain_distill.core.errors import ConfigError
from pretrain_distill.vocab.selection import VOCAB_FILE, StudentVocab

REWRITABLE = ("WordPiece", "WordLevel")
#: Files of the slow (Python) tokenizers: they hold the teacher's ids and are not written for the student.
_SLOW_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def model_type(backend_json: str) -> str:
    """The ``tokenizers`` model type of a tokenizer's backend JSON (``WordPiece``, ``BPE``, ...)."""
    return json.loads(backend_json)["model"]["type"]


def check_rewritable(tokenizer: Any) -> None:
    """Refuse (:class:`ConfigError`, one line) a tokenizer whose pruned form cannot give the remapped ids."""
    kind = model_type(tokenizer.backend_tokenizer.to_str())
    if kind not in REWRITABLE:
        raise ConfigError(
            f"student.vocab=corpus: the teacher's tokenizer is a {kind} model, which cannot be rewritten to "
            f"give the pruned ids (only {' and '.join(REWRITABLE)} can: BPE merges are keyed by token ids, "
            "Unigram ids are list positions); use student.vocab=full"
        )


def _remap_ids(node: Any, table: list[int]) -> Any:
    """The post-processor JSON with every token id remapped (``ids`` lists, ``[token, id]`` pairs)."""
    if isinstance(node, dict):
        return {k: [table[i] for i in v] if k == "ids" else _remap_ids(v, table) for k, v in node.items()}
    if isinstance(node, list):
        if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], int):
            return [node[0], table[node[1]]]  # BertProcessing / RobertaProcessing: [token, id]
        return [_remap_ids(v, table) for v in node]
    return node


def rewrite_backend(backend_json: str, vocab: StudentVocab) -> str:
    """The teacher's ``tokenizer.json`` text rewritten for the student (module doc)."""
    data = json.loads(backend_json)
    kind = data["model"]["type"]
    if kind not in REWRITABLE:
        raise ConfigError(f"a {kind} tokenizer cannot be rewritten for a pruned vocabulary")
    table = vocab.lookup().tolist()
    data["model"]["vocab"] = {token: table[i] for token, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens") or []:
        added["id"] = table[added["id"]]
    if data.get("post_processor"):
        data["post_processor"] = _remap_ids(data["post_processor"], table)
    if data.get("padding"):
        data["padding"]["pad_id"] = table[data["padding"]["pad_id"]]
    return json.dumps(data, ensure_ascii=False)


def write_student_tokenizer(tokenizer_dir: Path, vocab: StudentVocab, out: Path) -> None:
    """The teacher's tokenizer files from ``tokenizer_dir`` into ``out``, rewritten for ``vocab``."""
    for item in tokenizer_dir.iterdir():
        if item.is_file() and item.name not in _SLOW_FILES:
            shutil.copy2(item, out / item.name)
    backend = (tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")
    (out / "tokenizer.json").write_text(rewrite_backend(backend, vocab), encoding="utf-8")
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:
            table = vocab.lookup().tolist()
            config["added_tokens_decoder"] = {
                str(table[int(i)]): entry for i, entry in config["added_tokens_decoder"].items()
            }
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer: Any, source_dir: str | Path, out: Path) -> None:
    """Save ``tokenizer`` (loaded from ``source_dir``) into ``out``. A pruned student's tokenizer (its
    directory holds ``student_vocab.json``) is copied file by file: re-serialising it through ``tokenizers``
    (``save_pretrained``) keeps one token string per id, so the unkept tokens that share the unknown id
    would be lost and text split differently. Any other tokenizer: ``save_pretrained``."""
    source = Path(source_dir)
    if not (source / VOCAB_FILE).is_file():
        tokenizer.save_pretrained(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in (*_TOKENIZER_FILES, VOCAB_FILE):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
