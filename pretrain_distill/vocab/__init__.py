"""A pruned student vocabulary (``student.vocab: corpus``), in one place: which tokens are kept
(:mod:`.selection`), the id remap and the cut student on the model side (:mod:`.remap`), the rewritten
tokenizer for the export (:mod:`.tokenizer`) and the vocabulary of a run (:mod:`.resolve`)."""

from pretrain_distill.vocab.remap import VocabIndex, cut_student
from pretrain_distill.vocab.resolve import run_vocab
from pretrain_distill.vocab.selection import VOCAB_FILE, StudentVocab, choose_vocab, select_kept
from pretrain_distill.vocab.tokenizer import check_rewritable, save_tokenizer, write_student_tokenizer

__all__ = [
    "VOCAB_FILE",
    "StudentVocab",
    "VocabIndex",
    "check_rewritable",
    "choose_vocab",
    "cut_student",
    "run_vocab",
    "save_tokenizer",
    "select_kept",
    "write_student_tokenizer",
]
