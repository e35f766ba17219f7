"""An Ollama ``Modelfile`` for an exported GGUF, and a port of Ollama's Modelfile parser.

The ``TEMPLATE`` is Ollama's own ChatML form (``template/chatml.gotmpl`` in ollama/ollama):
Ollama puts the ``SYSTEM`` prompt first in ``.Messages`` when a request has none, so one
range over the messages covers system, user and assistant turns. It is written only when
the checkpoint's chat template renders exactly like it (checked by rendering both);
otherwise ``TEMPLATE`` is left out and Ollama picks a template from the GGUF's
``tokenizer.chat_template``.

**Quoting.** Ollama's parser (``parser/parser.go``) has no escapes. A value is bare (one
line), ``"..."`` or ``\"\"\"...\"\"\"`` (any lines); a command ends at the first line break
where the text so far, trimmed, unquotes, so a quoted value also ends early wherever a run
of quotes closing it is followed by spaces and a line break. Runes that are neither
printable nor space, tab or line break are dropped. :func:`quote` picks a form and proves
it by parsing it back with :func:`parse_modelfile`, a line-by-line port of Ollama's parser;
a license text that no form carries is split into several ``LICENSE`` commands (Ollama keeps
a list of licenses, in order) at those quote runs.
"""

from __future__ import annotations

import re

from llmforge.errors import ExportError

OLLAMA_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_PROBES = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
]
_COMMANDS = {
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
}
_ROLES = {"system", "user", "assistant"}


def render_ollama_chatml(messages: list[dict[str, str]]) -> str:
    """What Ollama renders from :data:`OLLAMA_CHATML` for ``messages`` (system included)."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def chatml_equivalent(chat_template: object) -> bool:
    """Whether a Hugging Face chat template renders like Ollama's ChatML template."""
    if not isinstance(chat_template, str):
        return False
    from llmforge.exporting.gguf_vocab import render_chat

    try:
        return all(
            render_chat(chat_template, m, add_generation_prompt=True) == render_ollama_chatml(m)
            for m in _PROBES
        )
    except Exception:
        return False


# -- Ollama's parser (parser/parser.go, ParseFile), ported rune for rune ----------------
_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _is_space(r: str) -> bool:
    return r in " \t"


def _is_newline(r: str) -> bool:
    return r in "\r\n"


def _next_state(r: str, cs: int) -> tuple[int, str]:
    """parseRuneForState: (next state, rune to keep; "" for none)."""
    if cs == _NIL:
        if r == "#":
            return _COMMENT, ""
        return (_NIL, "") if _is_space(r) or _is_newline(r) else (_NAME, r)
    if cs == _NAME:
        if r.isascii() and r.isalpha():
            return _NAME, r
        if _is_space(r):
            return _VALUE, ""
        raise ValueError("command must be one of " + ", ".join(sorted(_COMMANDS)))
    if cs == _VALUE:
        return (_NIL, r) if _is_newline(r) or _is_space(r) else (_VALUE, r)
    if cs in (_PARAMETER, _MESSAGE):
        alpha = r.isascii() and r.isalpha()
        if alpha or (cs == _PARAMETER and ((r.isascii() and r.isdigit()) or r == "_")):
            return cs, r
        if _is_space(r):
            return _VALUE, ""
        raise ValueError("unexpected EOF")
    return (_NIL, "") if _is_newline(r) else (_COMMENT, "")


def _unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """The (command, argument) pairs Ollama's ParseFile reads from ``text``.

    Raises:
        ValueError: Where Ollama's parser fails (unknown command, unterminated quote, no FROM).
    """
    cmds: list[tuple[str, str]] = []
    name, role, curr, buf = "", "", _NIL, ""
    for r in text.removeprefix("\ufeff"):
        nxt, r = _next_state(r, curr)
        if nxt != curr:
            if curr == _NAME:
                if buf.lower() not in _COMMANDS:
                    raise ValueError(f"unknown command {buf!r}")
                low = buf.lower()
                nxt = {"parameter": _PARAMETER, "message": _MESSAGE}.get(low, nxt)
                name = "model" if low == "from" else low
            elif curr == _PARAMETER:
                name = buf
            elif curr == _MESSAGE:
                if buf not in _ROLES:
                    raise ValueError("message role must be system, user or assistant")
                role = buf
            elif curr == _VALUE:
                s, ok = _unquote(buf.strip(" \t\r\n"))
                if not ok or _is_space(r):
                    buf += r
                    continue
                cmds.append((name, f"{role}: {s}" if role else s))
                role = ""
            buf, curr = "", nxt
        if r.isprintable():
            buf += r
    if curr == _VALUE:
        s, ok = _unquote(buf.strip(" \t\r\n"))
        if not ok:
            raise ValueError("unexpected EOF: unterminated quote")
        cmds.append((name, f"{role}: {s}" if role else s))
    elif curr not in (_NIL, _COMMENT):
        raise ValueError("unexpected EOF")
    if not any(c == "model" for c, _ in cmds):
        raise ValueError("no FROM line")
    return cmds


# -- writing ---------------------------------------------------------------------------
def clean(text: str) -> str:
    """``text`` without the runes Ollama's parser drops (non-printable, except whitespace)."""
    return "".join(c for c in text if c.isprintable() or c in " \t\r\n")


def quote(value: str, single_first: bool = False) -> str | None:
    """A quoting of ``value`` Ollama's parser reads back exactly; None if there is none.

    Args:
        value: The argument.
        single_first: Try the one-quote form before the triple-quote form.
    """
    forms = [f'"""{value}"""', f'"{value}"']
    for quoted in (forms[::-1] if single_first else forms) + [value]:
        try:
            if parse_modelfile(f"FROM x\nSYSTEM {quoted}\n")[1:] == [("system", value)]:
                return quoted
        except ValueError:
            continue
    return None


# A quote run followed by spaces and a line break ends a triple-quoted value early.
_EARLY_CLOSE = re.compile(r'"{3,}(?=[ \t]*[\r\n])')


def license_commands(text: str) -> list[str]:
    """``LICENSE`` lines whose arguments, joined in order, are ``text`` (cleaned)."""
    text, pieces, start = clean(text), [], 0
    for m in _EARLY_CLOSE.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    lines = []
    for piece in (p for p in pieces if p):
        quoted = quote(piece)
        if quoted is None:  # cannot happen for the pieces above; proven by the tests
            raise ExportError(
                "The license text cannot be written into an Ollama Modelfile.",
                "Leave the license out with --no-modelfile, and ship its text beside the model.",
            )
        lines.append(f"LICENSE {quoted}")
    return lines


def _quoted(what: str, value: str, single_first: bool = False) -> str:
    q = quote(value, single_first)
    if q is None:
        raise ExportError(
            f"The {what} has a run of three quotes at the end of a line, which an Ollama "
            "Modelfile cannot quote.",
            f"Change the {what}, or leave it out of the Modelfile.",
        )
    return q


def build_modelfile(
    gguf_file: str,
    *,
    chat_template: object = None,
    stop_tokens: list[str] | None = None,
    system: str | None = None,
    license_text: str | None = None,
    adapter_file: str | None = None,
) -> str:
    """The Modelfile text for ``ollama create NAME -f Modelfile`` beside the GGUF file(s).

    The text is parsed back with :func:`parse_modelfile` before it is returned: every
    command must come back with exactly the argument it was written with.

    Args:
        gguf_file: The model GGUF's file name (in the Modelfile's folder).
        chat_template: The checkpoint's chat template; ChatML gets a ``TEMPLATE``.
        stop_tokens: Token texts that end generation: one ``PARAMETER stop`` each.
        system: The system prompt the training data used, if it had one.
        license_text: The base model's license text.
        adapter_file: A GGUF LoRA adapter's file name, for an adapter export.

    Raises:
        ExportError: If a file name, stop token or the system prompt cannot be written.
    """
    for f in filter(None, [gguf_file, adapter_file]):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.gguf", f):
            raise ExportError(
                f"{f!r} is not a plain .gguf file name for a Modelfile.",
                "Name the GGUF files with letters, digits, '.', '_' and '-'.",
            )
    lines = [
        "# Modelfile written by llmforge: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_file}",
    ]
    expected = [("model", f"./{gguf_file}")]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
        expected.append(("adapter", f"./{adapter_file}"))
    if chatml_equivalent(chat_template):
        lines.append(f'TEMPLATE """{OLLAMA_CHATML}"""')
        expected.append(("template", OLLAMA_CHATML))
    else:
        lines.append("# no TEMPLATE: Ollama takes the chat template from the GGUF metadata")
    for token in stop_tokens or []:
        lines.append(f"PARAMETER stop {_quoted('stop token', token, single_first=True)}")
        expected.append(("stop", token))
    if system:
        lines.append(f"SYSTEM {_quoted('system prompt', clean(system))}")
        expected.append(("system", clean(system)))
    if license_text:
        for line in license_commands(license_text):
            lines.append(line)
            expected.append(("license", parse_modelfile(f"FROM x\n{line}\n")[1][1]))
    text = "\n".join(lines) + "\n"
    if parse_modelfile(text) != expected:  # a bug here, never a user's input
        raise AssertionError("the Modelfile does not parse back to what was written")
    return text
