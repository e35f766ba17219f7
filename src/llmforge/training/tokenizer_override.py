"""``tokenizer_override``: training a model with another tokenizer than its native one.

The override is a registry model's name (its tokenizer is used) or a folder holding a
Hugging Face tokenizer. It is recorded in every checkpoint's metadata
(``{"kind": "override", "identifier": ...}``) and saved in the checkpoint's ``tokenizer/``,
so generation always decodes with it. When the new vocabulary is larger than the model's
embedding, the embedding is resized (new rows freshly initialised) and the user is told.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.adapters.base import ModelAdapter
from llmforge.errors import ConfigError
from llmforge.modeling.tokenizers import HFTokenizer, Tokenizer
from llmforge.store.model_files import require_model_files
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace


def override_tokenizer(workspace: Workspace, ref: str) -> Tokenizer:
    """The tokenizer that ``tokenizer_override`` names: a registry model's, or a folder's.

    Raises:
        ConfigError: If ``ref`` is neither a registered model nor a tokenizer folder.
    """
    registry = ModelRegistry(workspace)
    if registry.exists(ref):
        folder = require_model_files(workspace, registry.get(ref))
    else:
        folder = Path(ref).expanduser()
        if not folder.is_absolute():
            folder = workspace.root / folder
    tok_files = ("tokenizer.json", "tokenizer_config.json")
    if not folder.is_dir() or not any((folder / f).is_file() for f in tok_files):
        names = ", ".join(registry.names()) or "none"
        raise ConfigError(
            f"tokenizer_override {ref!r} is neither a registered model nor a folder holding a "
            "Hugging Face tokenizer (tokenizer.json or tokenizer_config.json).",
            f"Give a model name (registered: {names}) or a tokenizer folder; "
            "or remove tokenizer_override to use the model's native tokenizer.",
        )
    return HFTokenizer(folder, "override", ref)


def apply_override(adapter: ModelAdapter, entry: ModelEntry, tok: Tokenizer) -> str:
    """Put ``tok`` on a registry model; return the warning that explains the risk."""
    native = adapter.tokenizer
    adapter.tokenizer = tok
    msg = (
        f"tokenizer_override: training {entry.model_name!r} with the tokenizer "
        f"{tok.identifier!r} ({tok.vocab_size} ids) instead of its native one "
        f"({native.identifier}, {native.vocab_size} ids). The pretrained embeddings were "
        "learned for other token ids, so expect a much higher starting loss and a model that "
        "needs more training; checkpoints record and save the override."
    )
    if adapter.resize_vocab(tok.vocab_size):
        msg += (
            f" The embedding was smaller than the new vocabulary and was resized to "
            f"{tok.vocab_size} rows (new rows are freshly initialised)."
        )
    return msg
