"""Loading a classifier from an encoder-only checkpoint: no spurious warnings, logging left as it was."""

from __future__ import annotations

import logging

from finetune.modeling import load_classifier
from finetune.tasks import get_task


def test_loading_is_quiet_and_restores_logger_levels(teacher_dir):
    names = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
    before = [logging.getLogger(n).level for n in names]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        logging.getLogger(names[0]).warning("canary")  # proves the handler sees transformers' warnings
        load_classifier(str(teacher_dir), get_task("movies"))
    finally:
        library.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["canary"]
    assert [logging.getLogger(n).level for n in names] == before
