"""Errors that reach the user as one actionable line (the CLI prints them and exits 2)."""


class TransferlabError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 2


class WeightsUnavailableError(TransferlabError):
    """Pretrained weights are not on this machine and cannot be fetched."""


class ImageReadError(TransferlabError):
    """An image file cannot be decoded."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DatasetError(TransferlabError):
    """A dataset folder is missing, empty or malformed."""


class CheckpointError(TransferlabError):
    """A checkpoint or weights file is unsafe, corrupt or does not fit the model."""


class OutputWriteError(TransferlabError):
    """An output file (run folder, checkpoint, CSV) cannot be written: disk full, read-only folder."""
