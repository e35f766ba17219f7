"""``llmforge generate``: sample text from a checkpoint or a registry model."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmforge.cli._context import workspace


def generate(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(help="A checkpoint (path, RUN, RUN/step-N) or a registry model name."),
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")
    ] = 200,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy.")] = 0.8,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample from the k most likely tokens.")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option("--top-p", help="Nucleus sampling threshold.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for reproducible samples.")
    ] = None,
) -> None:
    """Generate text, decoding with the tokenizer the model was trained with."""
    from llmforge.generate import SamplingOptions, stream_ids
    from llmforge.loading import load_for_inference

    opts = SamplingOptions(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    opts.check()
    adapter, _ = load_for_inference(workspace(ctx), source)
    tok = adapter.tokenizer
    prompt_ids = tok.encode(prompt)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    ids: list[int] = []
    shown = ""
    for nxt in stream_ids(adapter, prompt_ids, opts):
        ids.append(nxt)
        # Decode the whole completion each time: multi-byte tokens only become text together.
        text = tok.decode(ids)
        if not text.endswith("\ufffd"):
            out.write(text[len(shown) :])
            out.flush()
            shown = text
    out.write(tok.decode(ids)[len(shown) :] + "\n")
    out.flush()
