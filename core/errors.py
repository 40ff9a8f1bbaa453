"""Typed domain errors.

Library code raises these; only the CLI edge turns them into a one-line
message and an exit code (``edgescale.cli.app.main``).
"""

from __future__ import annotations


class EdgescaleError(Exception):
    """Base of every error edgescale raises on purpose."""

    exit_code: int = 1


class UsageError(EdgescaleError):
    """Invalid option value or malformed input from the user."""

    exit_code = 2


class EmptyPrompt(UsageError):
    """The prompt is empty or whitespace only."""


class InvalidSpec(UsageError):
    """A strategy spec string that does not parse."""


class OutputExists(UsageError):
    """A destination file or folder exists and replacing it was not asked for."""


class ModelNotFound(EdgescaleError):
    """The model name is not in the catalog and is not a file on disk."""

    exit_code = 3


class ModelNotInstalled(ModelNotFound):
    """A catalog model whose package is not installed."""


class InvalidModelFile(EdgescaleError):
    """The file is not a GGUF, is truncated, or is otherwise unusable."""

    exit_code = 4


class BackendUnavailable(EdgescaleError):
    """The inference backend library is missing or failed to initialise."""

    exit_code = 5


class ContextOverflow(EdgescaleError):
    """The prompt (plus requested generation) does not fit in the context."""

    exit_code = 6


class BudgetInfeasible(EdgescaleError):
    """Not even one sample fits in the memory or latency budget."""

    exit_code = 7


class KVCacheFull(EdgescaleError):
    """llama_decode found no KV slot for the batch (return code 1)."""

    exit_code = 8


class DecodeAborted(EdgescaleError):
    """llama_decode was aborted by the abort callback (return code 2)."""

    exit_code = 9


class DecodeError(EdgescaleError):
    """llama_decode failed fatally (negative return code)."""

    exit_code = 10


class QueueFull(EdgescaleError):
    """A shared decode loop has as many queries waiting as its queue holds."""

    exit_code = 11


class DeadlineMissed(EdgescaleError):
    """A query's deadline passed before it could start (and rejection was asked for)."""

    exit_code = 12


class DownloadFailed(EdgescaleError):
    """``edgescale pull`` could not fetch a model (network, server, offline mode); a partial file
    is kept for the next pull to resume."""

    exit_code = 13


class DiskFull(DownloadFailed):
    """Not enough free disk space for a download (checked before it starts, or hit while writing)."""


class ChecksumMismatch(DownloadFailed):
    """A downloaded file's sha256 is not the one expected (the file is deleted)."""
