"""The one error type of the data pipeline: bad input, named by file / shard and position."""

from __future__ import annotations


class DataError(ValueError):
    """Input the pipeline cannot use; the message names the file or shard and the position."""
