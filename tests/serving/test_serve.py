"""``llmforge serve``: a real uvicorn server on 127.0.0.1, spoken to with the official ``openai``
client.

The workspace holds a tiny random Qwen2 (``tiny``, imported from a folder) and a chat fine-tune
of it (``chat``, 40 steps: it answers "say X" with X and stops at ``<|im_end|>``). Answers are
checked against ``llmforge generate`` run as a real CLI (in a subprocess once, in-process with
Typer's runner elsewhere) and against llmforge's own generation functions. One module-scoped
server serves both models; a second one (max_concurrency=1, a slowed model) tests queueing.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from typer.testing import CliRunner

from helpers import assert_unchanged, snapshot
from llmforge.cli import app as llmforge_app
from llmforge.data.chat_templates import prompt_ids
from llmforge.inference.generation import ChatSession, SamplingOptions, iter_text, stream_ids
from llmforge.inference.model_source import load_for_inference
from llmforge.serving.app import create_app
from llmforge.serving.jobs import StopMatcher
from llmforge.serving.runner import ServerThread
from llmforge.serving.served_model import load_target
from llmforge.workspace import Workspace
from tiny_models import build_tiny_model

KEY = "test-key-123"
LLMFORGE = (sys.executable, "-m", "llmforge")
GREEDY_20 = ("-t", "0", "-n", "20")
ERROR_FIELDS = {"message", "type", "param", "code"}


def _cli(home: Path, *args: str) -> str:
    res = CliRunner().invoke(llmforge_app, ["--home", str(home), *args])
    assert res.exit_code == 0, res.output
    return res.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMFORGE_", "HF_TOKEN"))}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _http(
    method: str, url: str, body: Any = None, key: str | None = KEY, raw: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """One plain HTTP request (no client library's retries or parsing): status, headers, JSON."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, parts.path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read() or b"null")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with ``tiny`` (a random Qwen2) and ``chat`` (a chat fine-tune of it)."""
    root = tmp_path_factory.mktemp("serve")
    # initializer_range 0.3: a random model whose greedy output depends on the prompt.
    repo = build_tiny_model(root / "repo", initializer_range=0.3)
    ws = root / "ws"
    ws.mkdir()
    _cli(ws, "models", "import", str(repo), "--name", "tiny", "--accept-license")
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no", "ok", "fine")
    ]
    data = root / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 10), encoding="utf-8")
    cfg = {
        "model_name": "tiny",
        "data_path": str(data),
        "block_size": 32,
        "batch_size": 8,
        "max_steps": 40,
        "warmup_steps": 2,
        "learning_rate": 1e-2,
        "min_lr": 1e-3,
        "weight_decay": 0.0,
        "log_interval": 40,
        "eval_interval": 1000,
        "eval_steps": 1,
        "sample_interval": 0,
        "save_interval": 1000,
        "seed": 0,
    }
    (root / "chat.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()))
    _cli(ws, "train", str(root / "chat.yaml"))
    # `plain-chat`: the same weights and template, but <|im_end|> is not among the model's own
    # stop tokens (a base model a user chats with): only the chat format ends its turns.
    _cli(ws, "ckpt", "export", "chat", str(root / "exported"))
    gen_config = root / "exported" / "generation_config.json"
    gen_config.write_text(json.dumps({**json.loads(gen_config.read_text()), "eos_token_id": 0}))
    _cli(ws, "models", "import", str(root / "exported"), "--name", "plain-chat", "--accept-license")
    return ws


@pytest.fixture(scope="module")
def url(home: Path) -> Iterator[str]:
    names = ("tiny", "chat", "plain-chat")
    models = [load_target(Workspace(root=home), t, device="cpu") for t in names]
    with ServerThread(create_app(models, api_key=KEY, max_concurrency=8)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The request log lines written during the test."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("llmforge.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)


def _chat(client: openai.OpenAI, model: str, text: str, **kw: Any) -> tuple[str, Any]:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    return r.choices[0].message.content, r


def _chat_stream(client: openai.OpenAI, model: str, text: str, **kw: Any) -> tuple[str, list]:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], stream=True, **kw
        )
    )
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return deltas, chunks


# -- the API ---------------------------------------------------------------------------------
def test_models_are_listed_and_retrieved(client: openai.OpenAI, url: str) -> None:
    assert [m.id for m in client.models.list()] == ["tiny", "chat", "plain-chat"]
    assert client.models.retrieve("chat").owned_by == "llmforge"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("runs/chat")
    assert _http("GET", url.removesuffix("/v1") + "/health", key=None)[2] == {"status": "ok"}


def test_chat_plain_and_streamed_equal_generate_chat(client: openai.OpenAI, home: Path) -> None:
    text, resp = _chat(client, "chat", "say maybe", temperature=0, max_tokens=20)
    deltas, chunks = _chat_stream(client, "chat", "say maybe", temperature=0, max_tokens=20)
    cli = subprocess.run(
        [*LLMFORGE, "--home", str(home), "generate", "chat", "-m", "say maybe", *GREEDY_20],
        capture_output=True,
        env=_env(),
        timeout=120,
        check=True,
    )
    assert deltas == text == cli.stdout.decode("utf-8").removesuffix("\n")
    assert text and "<|im_end|>" not in text  # it stopped at the end-of-turn token, unshown
    assert resp.choices[0].finish_reason == "stop" and resp.usage.completion_tokens < 20
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    # The random base model runs to the length limit; the in-process CLI agrees as well.
    text, resp = _chat(client, "tiny", "Hello there", temperature=0, max_tokens=12)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 12
    out = _cli(home, "generate", "tiny", "--chat", "-m", "Hello there", "-t", "0", "-n", "12")
    assert out == text + "\n"
    assert _chat_stream(client, "tiny", "Hello there", temperature=0, max_tokens=12)[0] == text


def test_a_chat_reply_ends_at_the_end_of_turn_token_the_chat_format_names(
    client: openai.OpenAI, home: Path
) -> None:
    text, resp = _chat(client, "plain-chat", "say yes", temperature=0, max_tokens=20)
    assert text == _chat(client, "chat", "say yes", temperature=0, max_tokens=20)[0]
    assert text and "<|im_end|>" not in text and resp.choices[0].finish_reason == "stop"
    assert _cli(home, "generate", "plain-chat", "-m", "say yes", *GREEDY_20) == text + "\n"
    # A legacy completion stops where `generate --prompt` stops: not at the end of the turn.
    prompt = "<|im_start|>user\nsay yes<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model="plain-chat", prompt=prompt, temperature=0, max_tokens=20)
    assert r.choices[0].text.startswith(text + "<|im_end|>")
    out = _cli(home, "generate", "plain-chat", "-p", prompt, *GREEDY_20)
    assert out == prompt + r.choices[0].text + "\n"


def test_the_stream_is_server_sent_events_ending_in_done(url: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "say ok"}], "stream": True}
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", f"{parts.path}/chat/completions", json.dumps(body), _auth())
    r = conn.getresponse()
    events = r.read().decode().split("\n\n")
    conn.close()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["object"] == "chat.completion.chunk" and last["choices"][0]["finish_reason"]


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def test_usage_counts_match_the_tokenizer_and_stream_options(
    client: openai.OpenAI, home: Path
) -> None:
    adapter, meta = load_for_inference(Workspace(root=home), "chat", device="cpu")
    session = ChatSession(adapter, meta, "Be brief.")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say ok"}]
    ids = prompt_ids(adapter.tokenizer, messages, session.format)
    out = list(stream_ids(adapter, ids, SamplingOptions(max_new_tokens=20, temperature=0)))
    r = client.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_completion_tokens=20
    )
    assert r.choices[0].message.content == adapter.tokenizer.decode(out)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(out))
    assert r.usage.total_tokens == len(ids) + len(out)
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == r.usage  # OpenAI's usage chunk
    assert all(c.usage is None for c in chunks[:-1])


def test_legacy_completions_plain_streamed_and_cli(client: openai.OpenAI, home: Path) -> None:
    prompt = "The quick brown fox"
    r = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=24)
    streamed = client.completions.create(
        model="tiny", prompt=prompt, temperature=0, max_tokens=24, stream=True
    )
    pieces = [c.choices[0].text for c in streamed]
    text = r.choices[0].text
    assert "".join(pieces) == text and r.choices[0].finish_reason == "length"
    assert _cli(home, "generate", "tiny", "-p", prompt, "-t", "0", "-n", "24") == (
        prompt + text + "\n"
    )
    tok = load_target(Workspace(root=home), "tiny", device="cpu").prompt_tokenizer
    assert r.usage.prompt_tokens == len(tok.encode(prompt)) and r.usage.completion_tokens == 24
    by_ids = client.completions.create(
        model="tiny", prompt=tok.encode(prompt), temperature=0, max_tokens=24
    )
    assert by_ids.choices[0].text == text
    default = client.completions.create(model="tiny", prompt=prompt, temperature=0)
    assert default.usage.completion_tokens == 16  # OpenAI's default length for completions


def test_seeded_samples_equal_generate_seed(client: openai.OpenAI, home: Path) -> None:
    kw = {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 16}
    a, _ = _chat(client, "tiny", "Hi", **kw)
    assert _chat(client, "tiny", "Hi", **kw)[0] == a
    assert _chat_stream(client, "tiny", "Hi", **kw)[0] == a
    args = ["-t", "0.8", "--top-p", "0.9", "--seed", "7", "-n", "16"]
    assert _cli(home, "generate", "tiny", "-m", "Hi", *args) == a + "\n"
    assert _chat(client, "tiny", "Hi", **{**kw, "seed": 8})[0] != a


def test_stop_strings_cut_the_text_plain_and_streamed(client: openai.OpenAI) -> None:
    full = (
        client.completions.create(model="tiny", prompt="def add", temperature=0, max_tokens=40)
        .choices[0]
        .text
    )
    stop = next(full[i : i + 2] for i in range(8, len(full)) if full[i : i + 2].isprintable())
    cut = full[: full.find(stop)]
    r = client.completions.create(
        model="tiny", prompt="def add", temperature=0, max_tokens=40, stop=[stop, "\x00never"]
    )
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny", prompt="def add", temperature=0, max_tokens=40, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_length_is_clamped_to_the_room_the_context_leaves(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt=[5] * 505, max_tokens=10_000)
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[5] * 512, max_tokens=1)
    assert e.value.code == "context_length_exceeded"


def test_developer_role_and_content_parts_render_like_system_and_text(
    client: openai.OpenAI,
) -> None:
    def ask(role: str, content: object) -> str:
        messages = [{"role": role, "content": "Be brief."}, {"role": "user", "content": content}]
        r = client.chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=8
        )
        return r.choices[0].message.content

    parts = [{"type": "text", "text": "say "}, {"type": "text", "text": "yes"}]
    assert ask("developer", "say yes") == ask("system", "say yes") == ask("system", parts)
    with pytest.raises(openai.BadRequestError):
        ask("tool", "say yes")


def test_concurrent_requests_get_the_sequential_answers(client: openai.OpenAI) -> None:
    prompts = ["say yes", "say no", "say something else", "what is 1 2 3"]
    sequential = [_chat(client, "chat", p, temperature=0, max_tokens=24)[0] for p in prompts]

    def ask(i: int) -> str:
        if i % 2:
            return _chat_stream(client, "chat", prompts[i], temperature=0, max_tokens=24)[0]
        return _chat(client, "chat", prompts[i], temperature=0, max_tokens=24)[0]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == sequential


def test_two_models_take_turns_token_by_token(client: openai.OpenAI) -> None:
    done: list[str] = []

    def long() -> None:
        client.completions.create(model="tiny", prompt="a", max_tokens=400, temperature=0)
        done.append("long")

    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(long)
        time.sleep(0.05)
        _chat(client, "chat", "say no", temperature=0, max_tokens=5)  # not queued behind it
        done.append("short")
        job.result()
    assert done == ["short", "long"]


# -- errors ----------------------------------------------------------------------------------
def test_errors_have_openai_shape_and_status(client: openai.OpenAI, url: str) -> None:
    wrong = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.code == "invalid_api_key" and "wrong" not in e.value.message
    status, _, body = _http("GET", f"{url}/models", key=None)  # no key at all
    assert status == 401 and set(body["error"]) == ERROR_FIELDS and KEY not in json.dumps(body)
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "no-such-model", "hi")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[])
    assert e.value.param == "messages"
    for bad in ({"max_tokens": -1}, {"max_tokens": 0}, {"n": 2}, {"temperature": 3}):
        with pytest.raises(openai.BadRequestError):
            _chat(client, "chat", "hi", **bad)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="word " * 600)
    message = e.value.body["message"]
    assert e.value.code == "context_length_exceeded" and "maximum context length is 512" in message
    assert re.search(r"resulted in \d{3,} tokens", message)
    for raw in (b"{not json", b"[1]", b'{"model": "tiny"}'):
        status, _, body = _http("POST", f"{url}/completions", raw=raw)
        assert status == 400 and set(body["error"]) == ERROR_FIELDS


def test_a_request_only_reaches_served_models(client: openai.OpenAI, home: Path) -> None:
    # A run's path or a registry name that is not served is just an unknown model name.
    for name in (str(home / "runs" / "chat"), "chat/step-40", "../chat"):
        with pytest.raises(openai.NotFoundError):
            _chat(client, name, "hi")


# -- queueing --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow(home: Path) -> Iterator[tuple[str, Any]]:
    """A server with max_concurrency=1 whose one model takes ~20 ms per token: (url, app)."""
    model = load_target(Workspace(root=home), "tiny", device="cpu")
    step = model.adapter.generation_step

    def slow_step(*args: object, **kw: object) -> object:
        time.sleep(0.02)
        return step(*args, **kw)

    model.adapter.generation_step = slow_step  # type: ignore[method-assign]
    app = create_app([model], max_concurrency=1, max_body_bytes=4096)
    with ServerThread(app) as base:
        yield base, app


def _open_stream(url: str, max_tokens: int = 400) -> tuple[http.client.HTTPConnection, Any]:
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": max_tokens, "stream": True}
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", f"{parts.path}/completions", json.dumps(body), _auth())
    r = conn.getresponse()
    assert r.status == 200
    return conn, r


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(
    slow: tuple[str, Any], log_lines: list[str], stream: bool
) -> None:
    url = slow[0]
    if stream:
        conn, r = _open_stream(url)
        assert r.readline().startswith(b"data: ")  # a few tokens came
        conn.close()  # the client goes away mid-stream
    else:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 400}
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=0.5)
        conn.request("POST", f"{parts.path}/completions", json.dumps(body), _auth())
        with pytest.raises(socket.timeout):  # it gives up waiting and closes the connection
            conn.getresponse()
        conn.close()
    start = time.perf_counter()
    quick = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    r2 = quick.completions.create(model="tiny", prompt="Hi", max_tokens=5, temperature=0)
    assert r2.usage.completion_tokens == 5
    assert time.perf_counter() - start < 5  # the 400-token job (8 s) did not run on
    cut = [ln for ln in log_lines if "(client disconnected)" in ln]
    assert len(cut) == 1 and int(re.search(r"completion=(\d+)", cut[0])[1]) < 200


def test_a_full_queue_answers_503_with_retry_after(slow: tuple[str, Any]) -> None:
    url = slow[0]
    quick = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    running, waiting = _open_stream(url), _open_stream(url)
    status, headers, body = _http("POST", f"{url}/completions", {"model": "tiny", "prompt": "x"})
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert body["error"]["code"] == "server_overloaded"
    with pytest.raises(openai.InternalServerError) as e:
        quick.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert e.value.status_code == 503
    running[0].close()
    waiting[0].close()
    assert quick.completions.create(model="tiny", prompt="x", max_tokens=2).usage
    status, _, body = _http("POST", f"{url}/completions", {"model": "tiny", "prompt": "x" * 5000})
    assert status == 413 and "4096 bytes" in body["error"]["message"]


def test_a_stream_ended_by_shutdown_raises_in_the_client(slow: tuple[str, Any]) -> None:
    url, app = slow
    quick = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    stream = quick.completions.create(model="tiny", prompt="x", max_tokens=400, stream=True)
    next(iter(stream))
    app.state.scheduler.abort_all()  # what Ctrl-C does after the grace period
    with pytest.raises(openai.APIError, match="shutting down"):
        list(stream)
    assert quick.completions.create(model="tiny", prompt="x", max_tokens=2).usage  # still up


# -- text assembly (units) -------------------------------------------------------------------
def test_multibyte_characters_are_never_split(home: Path) -> None:
    tok = load_target(Workspace(root=home), "tiny", device="cpu").adapter.tokenizer
    text = "héllo wörld ✓ 日本語 🙂!"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # byte-level pieces: some characters span tokens
    pieces = list(iter_text(tok, ids))
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text


def test_stop_matcher_holds_back_a_possible_stop_across_pieces() -> None:
    m = StopMatcher(["END", "xy"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dmore") == ("", True)
    m = StopMatcher(["END"])
    assert (m.feed("aE"), m.feed("Nb"), m.flush()) == (("a", False), ("ENb", False), "")
    m = StopMatcher(["END"])
    assert (m.feed("zzEN"), m.flush()) == (("zz", False), "EN")


# -- the command -----------------------------------------------------------------------------
def test_serve_command_banner_examples_log_key_and_ctrl_c(home: Path) -> None:
    """The console's `serve` with LLMFORGE_API_KEY: its curl and openai examples run as
    printed, requests are logged on stderr, the key is never shown, Ctrl-C stops it with 0."""
    before = snapshot(home)
    env = _env(LLMFORGE_API_KEY=KEY)
    proc = subprocess.Popen(
        [*LLMFORGE, "--home", str(home), "serve", "chat", "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        banner = [proc.stdout.readline() for _ in range(3)]
        assert banner[0].startswith("Serving chat at http://127.0.0.1:"), banner
        curl = banner[1].split("curl:", 1)[1].strip()
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, env=env)
        assert json.loads(out.stdout)["object"] == "chat.completion", out
        code = banner[2].split("openai:", 1)[1].strip()
        out = subprocess.run(code, shell=True, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
        base = banner[0].split(" at ", 1)[1].split(" ", 1)[0]
        assert _http("GET", f"{base}/models", key="not-the-key")[0] == 401
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Server stopped." in err and "Traceback" not in err and "without an API key" not in err
    assert KEY not in "".join(banner) + rest + err and "not-the-key" not in err
    logged = [ln for ln in err.splitlines() if "POST /v1/chat/completions 200 model=chat" in ln]
    assert len(logged) == 2 and re.search(r"prompt=\d+ completion=\d+ .*\d\.\d\ds$", logged[0])
    assert "GET /v1/models 401" in err
    assert_unchanged(home, before)


def test_serve_refusals_are_one_paragraph(home: Path) -> None:
    """Off loopback without a key: a warning; a port in use, a key a header cannot carry and
    an unknown target: one paragraph, non-zero exit, the key never echoed, nothing written."""
    before = snapshot(home)
    taken = socket.create_server(("0.0.0.0", 0))
    port = str(taken.getsockname()[1])
    off_loopback = ["--home", str(home), "serve", "tiny", "--host", "0.0.0.0", "--port", port]
    try:
        res = CliRunner().invoke(llmforge_app, off_loopback)
        assert res.exit_code != 0 and "without an API key" in res.stderr
        assert f"Cannot listen on 0.0.0.0:{port}" in res.stderr and "--port" in res.stderr
        res = CliRunner().invoke(llmforge_app, off_loopback, env={"LLMFORGE_API_KEY": "s3cret key"})
        assert res.exit_code != 0 and "holds a space" in res.stderr
        assert "s3cret" not in res.stderr + res.stdout and "without an API key" not in res.stderr
    finally:
        taken.close()
    res = CliRunner().invoke(
        llmforge_app, ["--home", str(home), "serve", "tiny", "nope", "--port", "0"]
    )
    assert res.exit_code != 0 and "'nope' is neither a checkpoint nor a registered model" in (
        " ".join(res.stderr.split())
    )
    assert "Traceback" not in res.stderr
    assert_unchanged(home, before)


def test_without_the_serve_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    # None in sys.modules makes `import fastapi` fail as it does when it is not installed.
    code = (
        "import sys\nsys.modules['fastapi'] = sys.modules['uvicorn'] = None\n"
        "from llmforge.cli import main\nsys.argv = ['llmforge', 'serve', 'tiny']\nmain()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "pip install 'llmforge[serve]'" in p.stderr and not list(tmp_path.iterdir())
