"""The typed errors llmforge raises.

Library code raises these and never prints. Only ``llmforge.cli`` turns them into a
one-paragraph message on stderr (what went wrong, then what to do) and an exit code.
"""

from __future__ import annotations

# Exit codes, documented in the README's command reference.
EXIT_ERROR = 1  # the command could not do what was asked (bad input, missing model, ...)
EXIT_USAGE = 2  # the command line or a config file is malformed (click uses 2 as well)
EXIT_INTEGRITY = 3  # something on disk failed verification (checksums, corrupt files)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


class LLMForgeError(Exception):
    """Base class: a message saying what went wrong and a hint saying what to do.

    Args:
        message: What went wrong, in one or two sentences.
        hint: What the user can do about it; shown after the message.
    """

    exit_code: int = EXIT_ERROR
    # In a multi-process job every rank meets the same bad input; rank 0 alone reports it.
    # Errors that only this rank can report (it lost its peers, its own write failed) say so.
    every_rank: bool = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(LLMForgeError):
    """A training config (file, key or value) is invalid."""

    exit_code = EXIT_USAGE


class WorkspaceError(LLMForgeError):
    """The workspace directory is unusable (missing, not a directory, not writable)."""


class InvalidModelNameError(LLMForgeError):
    """A model name does not match the allowed pattern."""

    exit_code = EXIT_USAGE


class RegistryError(LLMForgeError):
    """The registry file cannot be read or written."""


class RegistryCorruptError(RegistryError):
    """``registry.json`` exists but is not a valid registry; it is never overwritten."""

    exit_code = EXIT_INTEGRITY


class ModelNotFoundError(LLMForgeError):
    """No registry entry has the requested name."""


class ModelExistsError(LLMForgeError):
    """A registry entry with that name already exists."""


class ModelFilesMissingError(LLMForgeError):
    """A registry entry exists but its files are missing or do not match the record."""

    exit_code = EXIT_INTEGRITY


class UnsafePathError(LLMForgeError):
    """A path recorded somewhere points outside the workspace."""

    exit_code = EXIT_INTEGRITY


class ModelInUseError(LLMForgeError):
    """Deleting a model would leave adapters or checkpoints that need it unable to load."""


class RunInUseError(ModelInUseError):
    """``runs delete``: registry models were made from the run's checkpoints."""


class ConfirmationRequiredError(LLMForgeError):
    """A destructive command needs confirmation and none could be asked for."""

    exit_code = EXIT_USAGE


class DataError(LLMForgeError):
    """A training data file is missing, empty, unreadable or malformed."""


class CheckpointError(LLMForgeError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint file differs from its manifest (changed or truncated after it was saved)."""

    exit_code = EXIT_INTEGRITY


class AdapterNotFoundError(LLMForgeError):
    """No adapter handles the requested architecture."""


class TrainingError(LLMForgeError):
    """Training cannot start or cannot continue (non-finite loss, run exists, ...)."""


class RunLockedError(TrainingError):
    """Another process is training the same run (it holds ``runs/RUN/.lock``)."""


class DistributedError(TrainingError):
    """A process of a multi-process job lost the others (died, hung, unreachable); each rank
    reports its own."""

    every_rank = True


# -- importing models from the Hugging Face Hub or a local folder ----------------------------
class InvalidSourceError(LLMForgeError):
    """The SOURCE of `models import` is neither a hub id, a hub URL nor a model folder."""

    exit_code = EXIT_USAGE


class HubError(LLMForgeError):
    """Talking to the Hugging Face Hub failed (base class of the hub errors)."""


class RepoNotFoundError(HubError):
    """The repository does not exist, or is private and the token cannot see it."""


class GatedRepoError(HubError):
    """The repository is gated: it needs a token of an account that was granted access."""


class RevisionNotFoundError(HubError):
    """The repository exists but the requested branch, tag or commit does not."""


class HubUnreachableError(HubError):
    """The hub cannot be reached (network down, wrong HF_ENDPOINT, or HF_HUB_OFFLINE=1)."""


class MalformedTokenError(HubError):
    """A hub token (--token, HF_TOKEN or the saved login) has characters no token has."""

    exit_code = EXIT_USAGE


class RepoChangedError(HubError):
    """The repository moved to another commit while an import was reading it."""


class ChecksumMismatchError(LLMForgeError):
    """A downloaded file does not match the checksum the hub advertises for it."""

    exit_code = EXIT_INTEGRITY


class UnsupportedArchitectureError(LLMForgeError):
    """The model's architecture (config.json ``model_type``) has no adapter in llmforge."""


class LicenseNotAcceptedError(LLMForgeError):
    """The model's license was declined, or could not be asked about."""


class InsufficientDiskError(LLMForgeError):
    """The disk holding the workspace lacks room for the download."""


class UnsafeWeightsError(LLMForgeError):
    """Pickled weights contain something other than tensors; they are never executed."""

    exit_code = EXIT_INTEGRITY


class InconsistentModelError(LLMForgeError):
    """A model's files do not fit together (malformed safetensors, config.json vs weights)."""

    exit_code = EXIT_INTEGRITY


class ExportError(LLMForgeError):
    """A checkpoint could not be exported (destination not empty, unsafe, ...)."""


class BadRecordError(DataError):
    """A record of a data file (JSONL line, CSV row) is malformed; names the file and line."""


class ChatTemplateError(DataError):
    """A chat template (the model's, the config's or a checkpoint's) fails to render; names it."""


class EvalError(LLMForgeError):
    """``llmforge eval`` cannot run as asked (a task, an include path, lm-eval itself)."""
