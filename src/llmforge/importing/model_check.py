"""Whether an imported model's files fit together, checked before it is registered.

transformers finds out only when the model is loaded for training: a safetensors header that
does not describe its file fails inside safetensors, and a config.json whose sizes differ from
the weights fails with "look at the above report!" and no report. An import checks instead,
reading only the safetensors headers (no tensor, no torch):

- every ``*.safetensors`` file is valid
  (:func:`llmforge.store.safetensors_header.read_safetensors_header`);
- a ``model.safetensors.index.json`` names only shards that are there, and tensors they hold;
- for the built-in architectures (Qwen2, Qwen3), every tensor config.json implies is present
  with the shape it implies (:func:`expected_tensors`, checked against transformers' own
  modules in the tests), and no layer beyond ``num_hidden_layers`` exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmforge.errors import InconsistentModelError, InvalidSourceError
from llmforge.fsutil import human_bytes
from llmforge.store.safetensors_header import read_safetensors_header
from llmforge.untrusted import brief

INDEX = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 8 << 20  # a model's config.json is a few KB; anything this big is not one
_HINT = (
    "The repository's config.json and weights do not belong together; it cannot be trained "
    "or loaded. Import another revision or repository (or fix config.json in a local folder)."
)
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def parse_config(data: bytes, where: str, file: str = "config.json") -> dict[str, Any]:
    """Parse the bytes of a config.json (or another small JSON file) of a model (untrusted).

    Args:
        data: The file's bytes.
        where: The model, for messages (``'Qwen/Qwen2-0.5B'``, a folder).
        file: The file's name, for messages.

    Raises:
        InvalidSourceError: If it is larger than :data:`MAX_CONFIG_BYTES`, not UTF-8 JSON,
            nested too deeply to parse, or not a JSON object.
    """
    what = f"The {file} of {where}"
    hint = (
        'A model\'s config.json is a JSON object such as {"model_type": "qwen2", ...}; '
        "this repository or folder is broken. Import another revision or repository."
    )
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidSourceError(
            f"{what} is larger than {human_bytes(MAX_CONFIG_BYTES)}; a model's JSON files "
            "are a few kilobytes.",
            hint,
        )
    try:
        config = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise InvalidSourceError(f"{what} is nested too deeply to be read.", hint) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
        raise InvalidSourceError(
            f"{what} is not valid JSON ({brief(str(e), 100)}).", hint
        ) from None
    if not isinstance(config, dict):
        raise InvalidSourceError(
            f"{what} is not a JSON object (it holds a {type(config).__name__}).", hint
        )
    return config


def _size(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def expected_tensors(config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], set[str]] | None:
    """The tensors a Qwen2 / Qwen3 config.json implies, with their shapes.

    Only what the config states is used (a missing size means no expectation: transformers'
    defaults differ between versions), so the check can only flag a real disagreement.

    Args:
        config: The parsed config.json.

    Returns:
        ``(required, optional)``: tensor name to shape for the tensors that must be in the
        weights, and the names that may be missing (a tied ``lm_head.weight``); None for an
        architecture without such a table, or a config lacking the sizes.
    """
    arch = config.get("model_type")
    if arch not in ("qwen2", "qwen3"):
        return None
    hidden, layers = _size(config, "hidden_size"), _size(config, "num_hidden_layers")
    vocab, inter = _size(config, "vocab_size"), _size(config, "intermediate_size")
    heads = _size(config, "num_attention_heads")
    if None in (hidden, layers, vocab, inter, heads):
        return None
    assert hidden and layers and vocab and inter and heads
    kv = _size(config, "num_key_value_heads") or heads
    head_dim = _size(config, "head_dim") or (hidden // heads if arch == "qwen2" else None)
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    bias = arch == "qwen2" or config.get("attention_bias") is True
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (hidden,)
        out[p + "post_attention_layernorm.weight"] = (hidden,)
        out[p + "mlp.gate_proj.weight"] = (inter, hidden)
        out[p + "mlp.up_proj.weight"] = (inter, hidden)
        out[p + "mlp.down_proj.weight"] = (hidden, inter)
        if head_dim is None:
            continue
        q, k = heads * head_dim, kv * head_dim
        out |= {
            p + "self_attn.q_proj.weight": (q, hidden),
            p + "self_attn.k_proj.weight": (k, hidden),
            p + "self_attn.v_proj.weight": (k, hidden),
            p + "self_attn.o_proj.weight": (hidden, q),
        }
        if bias:
            out |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (k,)}
            out[p + "self_attn.v_proj.bias"] = (k,)
        if arch == "qwen3" and config.get("attention_bias") is True:
            out[p + "self_attn.o_proj.bias"] = (hidden,)
        if arch == "qwen3":
            out[p + "self_attn.q_norm.weight"] = (head_dim,)
            out[p + "self_attn.k_norm.weight"] = (head_dim,)
    optional = {"lm_head.weight"} if config.get("tie_word_embeddings") is not False else set()
    return out, optional


def weight_shapes(folder: Path, names: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name to ``(file, shape)`` over the given safetensors files, each validated.

    Raises:
        UnsafeWeightsError: If a file is not a valid safetensors file.
        InconsistentModelError: If two files hold a tensor of the same name.
    """
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in sorted(names):
        for tensor, info in read_safetensors_header(folder / name).items():
            if tensor == "__metadata__":
                continue
            if tensor in found:
                raise InconsistentModelError(
                    f"The tensor {brief(tensor, 80)} is in both {found[tensor][0]} and {name}.",
                    _HINT,
                )
            found[tensor] = (name, tuple(info["shape"]))
    return found


def check_model_files(folder: Path, config: dict[str, Any], where: str) -> None:
    """Refuse a model whose weights are malformed or do not fit its config.json.

    Args:
        folder: The folder holding the model's files (config.json, weights, index).
        config: Its parsed config.json.
        where: The model, for messages (``'Qwen/Qwen2-0.5B'``).

    Raises:
        UnsafeWeightsError: If a safetensors file is malformed.
        InconsistentModelError: If the index, the weights and config.json disagree, naming
            the first tensor that does.
    """
    names = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    shapes = weight_shapes(folder, names)
    if (folder / INDEX).is_file():
        _check_index(folder / INDEX, names, shapes, where)
    expected = expected_tensors(config)
    if expected is None:
        return
    required, optional = expected
    if shapes and not any(t.startswith("model.") for t in shapes):  # a bare Qwen2Model save
        shapes = {(t if t.startswith("lm_head.") else "model." + t): v for t, v in shapes.items()}
    for tensor, shape in required.items():
        if tensor not in shapes:
            if tensor in optional:
                continue
            raise InconsistentModelError(
                f"The weights of {where} have no tensor {tensor}, which its config.json "
                f"implies (shape {list(shape)}).",
                _HINT,
            )
        file, actual = shapes[tensor]
        if actual != shape:
            raise InconsistentModelError(
                f"The weights of {where} do not fit its config.json: {tensor} in {file} has "
                f"shape {list(actual)}, but config.json implies {list(shape)}.",
                _HINT,
            )
    layers = config["num_hidden_layers"]
    extra = sorted(t for t in shapes if (m := _LAYER.match(t)) and int(m[1]) >= layers)
    if extra:
        raise InconsistentModelError(
            f"The weights of {where} hold {extra[0]}, a layer beyond the {layers} that its "
            "config.json (num_hidden_layers) declares.",
            _HINT,
        )


def _check_index(
    index: Path, names: list[str], shapes: dict[str, tuple[str, tuple[int, ...]]], where: str
) -> None:
    with open(index, "rb") as f:
        data = parse_config(f.read(MAX_CONFIG_BYTES + 1), where, INDEX)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise InconsistentModelError(f"{INDEX} of {where} has no weight_map.", _HINT)
    for tensor, file in weight_map.items():
        if file not in names:
            raise InconsistentModelError(
                f"{INDEX} of {where} puts {brief(tensor, 80)} in {brief(file, 80)}, which is "
                "not among the model's safetensors files.",
                _HINT,
            )
        if shapes.get(tensor, ("",))[0] != file:
            raise InconsistentModelError(
                f"{INDEX} of {where} puts {brief(tensor, 80)} in {file}, which does not hold it.",
                _HINT,
            )


def check_tokenizer(folder: Path, config: dict[str, Any], where: str) -> None:
    """Refuse a model whose tokenizer cannot be loaded, or has more tokens than its embedding.

    A model imported with a damaged or missing ``tokenizer.json`` would only fail later, at
    ``train`` or ``generate``; one whose tokenizer yields ids past ``vocab_size`` would fail
    inside the embedding lookup.

    Args:
        folder: The staged model folder.
        config: Its parsed config.json.
        where: The model, for messages.

    Raises:
        InconsistentModelError: If the tokenizer does not load or does not fit the model.
    """
    from llmforge.errors import CheckpointError
    from llmforge.modeling.tokenizers import load_tokenizer

    try:
        tokenizer = load_tokenizer(folder)
    except CheckpointError as e:
        raise InconsistentModelError(
            f"The tokenizer of {where} cannot be used: {e.message.replace(f' in {folder}', '')}",
            "Import a model whose tokenizer.json (or tokenizer_config.json and vocabulary "
            "files) loads with transformers' AutoTokenizer; nothing was registered.",
        ) from None
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise InconsistentModelError(
            f"The tokenizer of {where} has {tokenizer.vocab_size:,} tokens, more than the "
            f"{vocab:,} rows of the model's embedding (vocab_size in config.json).",
            _HINT,
        )
