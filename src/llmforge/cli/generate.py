"""``llmforge generate``: sample text from a checkpoint or a registry model."""

from __future__ import annotations

import sys
from typing import Annotated, Any

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
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Chat with the model's chat template (the one it was fine-tuned with); "
            "without --message: an interactive chat on a terminal, else one message from stdin.",
        ),
    ] = False,
    message: Annotated[
        str | None,
        typer.Option("--message", "-m", help="One user message: print the reply (implies --chat)."),
    ] = None,
    system: Annotated[
        str | None, typer.Option("--system", help="System message for --chat.")
    ] = None,
    allow_base_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-base-mismatch",
            help="Use a LoRA adapter even though its base model's files changed (experts only).",
        ),
    ] = False,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda."
        ),
    ] = "auto",
) -> None:
    """Generate text, decoding with the tokenizer the model was trained with."""
    from llmforge.inference.generation import SamplingOptions, check_text_option

    opts = SamplingOptions(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    opts.check()
    for option, value in (("--prompt", prompt), ("--message", message), ("--system", system)):
        check_text_option(option, value)
    if chat or message is not None or system is not None:
        _chat(
            ctx,
            source,
            message if message is not None else prompt or None,
            system,
            opts,
            allow_base_mismatch,
            device,
        )
        return
    adapter, _ = _load(ctx, source, allow_base_mismatch, device)
    _continue_prompt(adapter, prompt, opts)


def _continue_prompt(adapter: Any, prompt: str, opts: Any) -> None:
    """Print the prompt, then the model's continuation as it is sampled."""
    from llmforge.inference.generation import iter_text, stream_ids

    tok = adapter.tokenizer
    prompt_ids = tok.encode(prompt)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for piece in iter_text(tok, stream_ids(adapter, prompt_ids, opts)):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _read_stdin() -> str:
    """The message piped on stdin, which must be UTF-8 text."""
    from llmforge.errors import ConfigError
    from llmforge.inference.generation import check_text_option

    try:
        text = sys.stdin.read().strip()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"The message on stdin is not valid UTF-8 text (byte {e.start}: {e.reason}).",
            "Pipe UTF-8 text, or pass the message with --message TEXT.",
        ) from None
    check_text_option("The message on stdin", text)  # a surrogateescape'd byte
    return text


def _load(
    ctx: typer.Context, source: str, allow_base_mismatch: bool, device: str = "auto"
) -> tuple[Any, Any]:
    """The model for ``source``, printing any warning about a LoRA adapter's base."""
    from llmforge.cli import _render as r
    from llmforge.inference.model_source import load_for_inference

    notes: list[str] = []
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}.")
    loaded = load_for_inference(
        workspace(ctx),
        source,
        allow_base_mismatch=allow_base_mismatch,
        warnings=notes,
        device=device,
    )
    for note in notes:
        r.print_warning(note)
    return loaded


def _chat(
    ctx: typer.Context,
    source: str,
    message: str | None,
    system: str | None,
    opts: Any,
    allow_base_mismatch: bool = False,
    device: str = "auto",
) -> None:
    """One reply to ``message``, or (no message) a chat loop on a terminal / stdin's message."""
    from llmforge.cli import _render as r
    from llmforge.errors import ConfigError
    from llmforge.inference.generation import ChatSession, check_text_option

    interactive = message is None and _stdin_is_terminal()
    if message is None and not interactive:
        message = _read_stdin()
        if not message:
            raise typer.BadParameter("no message: pass --message TEXT or pipe one on stdin.")
    adapter, meta = _load(ctx, source, allow_base_mismatch, device)
    session = ChatSession(adapter, meta, system)
    out = sys.stdout
    if not interactive:
        for piece in session.reply(message, opts):
            out.write(piece)
            out.flush()
        out.write("\n")
        return
    out.write("Chat with the model: an empty line, Ctrl-D or /exit ends it.\n")
    while True:
        try:
            text = input("you> ").strip()
            check_text_option("That line", text)
        except EOFError:
            out.write("\n")
            return
        except (UnicodeDecodeError, ConfigError):
            r.print_warning("That line is not valid UTF-8 text; type it again.")
            continue
        if not text or text == "/exit":
            return
        out.write("model> ")
        for piece in session.reply(text, opts):
            out.write(piece)
            out.flush()
        out.write("\n")
