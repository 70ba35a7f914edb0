"""The one error type of the data pipeline: bad input, named by file / shard and position."""

from __future__ import annotations


class DataError(ValueError):
    """Input the pipeline cannot use; the message names the file or shard and the position."""


class CorruptInput(DataError):
    """A compressed input member that does not decode: its file and byte offsets are attributes."""

    def __init__(self, message: str, file: str, member_offset: int, error_offset: int) -> None:
        super().__init__(message)
        self.file, self.member_offset, self.error_offset = file, member_offset, error_offset

    def __reduce__(self):  # picklable across prepare's worker processes
        return type(self), (str(self), self.file, self.member_offset, self.error_offset)
