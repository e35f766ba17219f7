"""Data, templates, tokenizers and generation options are checked when they are read; exports
and registrations fail cleanly on a full disk and clean up after a kill.

Every bad input here used to pass the checks and fail later (a lone surrogate at the first
checkpoint save, hours into a run) or crash ("Unexpected error"). Each case asserts the one clear
message naming the file and line (or the template's origin), and that nothing was written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kill_at
import pytest

from helpers import flat, snapshot
from llmforge.checkpoints.manifest import write_manifest
from llmforge.data.chat_templates import resolve_chat_format
from llmforge.data.data_files import read_data_file
from llmforge.errors import BadRecordError, ChatTemplateError, CheckpointError
from llmforge.modeling.tokenizers import CharTokenizer, HFTokenizer
from train_helpers import run_cli, small_corpus, write_config

GOOD_CHAT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
SURROGATE = '"bad \\ud800 text"'  # a JSON escape: half of a UTF-16 pair, alone


def _lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- item 6: text that no checkpoint could store is refused when the data is read -------------
@pytest.mark.parametrize(
    ("name", "content", "where", "field"),
    [
        ("t.jsonl", f'{{"text": "ok"}}\n{{"text": {SURROGATE}}}\n', "line 2", "'text'"),
        (
            "pc.jsonl",
            f'{{"prompt": "p", "completion": "c"}}\n{{"prompt": {SURROGATE}, "completion": "c"}}',
            "line 2",
            "'prompt'",
        ),
        (
            "c.jsonl",
            json.dumps(GOOD_CHAT)
            + '\n{"messages": [{"role": "user", "content": "a"}, '
            + f'{{"role": "assistant", "content": {SURROGATE}}}]}}\n',
            "line 2",
            "'messages[1].content'",
        ),
        (
            "extra.jsonl",  # a field the template may render is checked too
            json.dumps(GOOD_CHAT)[:-1] + f', "meta": {{"note": {SURROGATE}}}}}\n',
            "line 1",
            "'meta.note'",
        ),
        ("a.json", f'[{{"text": "ok"}}, {{"text": {SURROGATE}}}]', "record 2", "'text'"),
        ("d.json", f'{{"data": [{{"text": {SURROGATE}}}]}}', "record 1", "'text'"),
    ],
)
def test_lone_surrogate_is_refused_with_file_and_line(
    tmp_path: Path, name: str, content: str, where: str, field: str
) -> None:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(BadRecordError) as info:
        read_data_file(str(p), "auto", skip_bad_lines=False)
    msg = info.value.message
    assert f"{p}, {where}: {field} is not valid Unicode text" in msg, msg
    assert "lone surrogate \\ud800 at character 5" in msg


def test_surrogate_data_stops_training_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    text = small_corpus(tmp_path / "c.txt").read_text(encoding="utf-8")
    rows = [json.dumps({"text": text[i : i + 400]}) for i in range(0, len(text), 400)]
    rows[3] = f'{{"text": {SURROGATE}}}'
    data = _lines(tmp_path / "s.jsonl", *rows)
    cfg = write_config(tmp_path / "s.yaml", data_path=str(data))
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 1, res.output
    assert f"{data}, line 4: 'text' is not valid Unicode text" in res.stderr
    assert "skip_bad_lines" in res.stderr and "Traceback" not in res.output
    assert snapshot(home) == before  # no run folder, no half checkpoint
    # With skip_bad_lines the line is skipped and the run saves its checkpoints.
    cfg = write_config(tmp_path / "s.yaml", data_path=str(data), skip_bad_lines=True)
    res = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code == 0, res.output
    assert "Skipped 1 bad line(s)" in res.stderr


def test_data_path_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/d\xff.txt")  # a real non-UTF-8 name
    shutil.copyfile(small_corpus(tmp_path / "c.txt"), name)
    cfg = write_config(tmp_path / "p.yaml", data_path=name)  # YAML writes it as "\uDCFF"
    res = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code == 1, res.output
    assert "is not valid UTF-8 text: it holds the byte 0xff" in res.stderr
    assert "Rename the file" in res.stderr and not (home / "runs").exists()


def test_char_vocabulary_cannot_hold_a_surrogate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        CharTokenizer(["a", "\ud800"])
    (tmp_path / "char_vocab.json").write_text(
        '{"type": "char", "version": 1, "unknown_id": 0, "chars": ["a", "\\ud800"]}'
    )
    with pytest.raises(CheckpointError, match="malformed"):
        CharTokenizer.load(tmp_path)


# -- item 14: records nested too deep, long CSV fields, a BOM, a JSON object file -------------
def test_json_nested_100000_deep_is_a_bad_line(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    p = _lines(tmp_path / "deep.jsonl", '{"text": "ok"}', deep, '{"text": "fine"}')
    with pytest.raises(BadRecordError, match=r"deep.jsonl, line 2: bad JSON: nested more than"):
        read_data_file(str(p), "auto", skip_bad_lines=False)
    assert len(read_data_file(str(p), "auto", skip_bad_lines=True).records) == 2
    arr = tmp_path / "deep.json"
    arr.write_text(deep, encoding="utf-8")
    with pytest.raises(BadRecordError, match="nested more than"):
        read_data_file(str(arr), "auto", skip_bad_lines=False)
    # Deep enough to parse, too deep for the walks that follow (checks, templates).
    p = _lines(tmp_path / "d2.jsonl", '{"text": "x", "meta": ' + "[" * 200 + "]" * 200 + "}")
    with pytest.raises(BadRecordError, match="nested more than 64 levels"):
        read_data_file(str(p), "auto", skip_bad_lines=False)


def test_csv_with_a_long_field_and_a_bom_reads(tmp_path: Path) -> None:
    long = "word " * 60_000  # 300 KB: over csv's default field limit of 128 KB
    p = tmp_path / "pc.csv"
    p.write_bytes(
        b"\xef\xbb\xbfprompt,completion\n"  # a spreadsheet's byte-order mark
        + f'"Q1","{long}"\n"Q2","A2"\n'.encode()
    )
    got = read_data_file(str(p), "auto", skip_bad_lines=False)
    assert got.format == "prompt-completion"
    assert [r["prompt"] for r in got.records] == ["Q1", "Q2"]
    assert got.records[0]["completion"] == long
    p.write_text('prompt,completion\n"a","b","c"\n', encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"pc.csv, line 2: 1 more cell\(s\) than the header"):
        read_data_file(str(p), "auto", skip_bad_lines=False)


def test_json_object_files(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]
    p.write_text(json.dumps({"version": "1", "data": rows}, indent=2), encoding="utf-8")
    got = read_data_file(str(p), "auto", skip_bad_lines=False)
    assert got.format == "prompt-completion" and got.records == rows
    p.write_text(json.dumps(GOOD_CHAT, indent=2), encoding="utf-8")  # one record, pretty
    assert read_data_file(str(p), "auto", skip_bad_lines=False).records == [GOOD_CHAT]
    p.write_text(json.dumps({"rows": rows}, indent=2), encoding="utf-8")
    with pytest.raises(BadRecordError) as info:
        read_data_file(str(p), "auto", skip_bad_lines=False)
    msg = info.value.message
    assert "holds an object with keys 'rows'; expected a JSON array of records" in msg
    assert '"data" array' in msg and "one JSON object a line" in msg
    p.write_text('[{"text": "a"},\n {"text": "b"\n]', encoding="utf-8")  # a broken array
    with pytest.raises(BadRecordError, match=r"d.json, line 3: bad JSON"):
        read_data_file(str(p), "auto", skip_bad_lines=False)
    p.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")  # JSON lines in .json
    assert len(read_data_file(str(p), "auto", skip_bad_lines=False).records) == 2


# -- item 14: tokenizers and chat templates -----------------------------------------------------
@pytest.fixture
def tok(tiny_qwen_repo: Path) -> HFTokenizer:
    return HFTokenizer(tiny_qwen_repo, "native", "tiny")


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{% for m in messages %}{{ m.content }", "has a syntax error on line 1: unexpected '}'"),
        (
            "{{ raise_exception('System role not supported') }}",
            "refused the conversation: System role not supported",
        ),
        (
            "{{ messages.__class__.__mro__[1].__subclasses__() }}",
            "did something Jinja's sandbox refuses: access to attribute '__class__'",
        ),
        ("{% for i in range(10**9) %}x{% endfor %}", "The sandbox blocks ranges larger than"),
        ("{{ messages[0].content + 1 }}", "failed while rendering: TypeError"),
        ("{{ '\ud800' }}", "is not valid Unicode text: it holds a lone surrogate"),
    ],
)
def test_chat_template_errors_name_the_template(tok: HFTokenizer, template: str, needle: str):
    with pytest.raises(ChatTemplateError) as info:
        resolve_chat_format(tok, template)
    assert info.value.message.startswith("The chat_template of the training config "), info.value
    assert needle in info.value.message, info.value.message
    assert "chat_template: chatml" in (info.value.hint or "")


def test_a_models_broken_template_is_a_clean_training_error(
    tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_qwen_repo, repo)
    (repo / "chat_template.jinja").write_text("{% if %}", encoding="utf-8")
    home = tmp_path / "ws"
    home.mkdir()
    res = run_cli(home, "models", "import", str(repo), "--name", "t", "--accept-license")
    assert res.exit_code == 0, res.output
    data = _lines(tmp_path / "c.jsonl", *[json.dumps(GOOD_CHAT)] * 4)
    cfg = write_config(tmp_path / "c.yaml", model_name="t", data_path=str(data))
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 1, res.output
    assert "The chat template of the model's tokenizer" in res.stderr
    assert "models/t) has a syntax error on line 1" in res.stderr
    assert "Unexpected" not in res.stderr and snapshot(home) == before


@pytest.mark.parametrize("broken", ["malformed", "missing"])
def test_malformed_or_missing_tokenizer_json(
    tmp_path: Path, tiny_qwen_repo: Path, broken: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_qwen_repo, repo)
    if broken == "missing":
        (repo / "tokenizer.json").unlink()
        needle = "has no vocabulary: it turns text into no tokens"
    else:
        (repo / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 5')
        needle = "Cannot load the tokenizer in"
    with pytest.raises(CheckpointError, match=needle):
        HFTokenizer(repo)
    home = tmp_path / "ws"
    home.mkdir()
    # models import refuses it before anything is registered ...
    before = snapshot(home)
    res = run_cli(home, "models", "import", str(repo), "--name", "t", "--accept-license")
    assert res.exit_code == 3, res.output
    assert needle.replace("Cannot load the tokenizer in", "cannot be used") in res.stderr
    assert "Unexpected" not in res.stderr and snapshot(home) == before
    # ... and a tokenizer damaged after the import is caught by the model's manifest.
    res = run_cli(home, "models", "import", str(tiny_qwen_repo), "--name", "t", "--accept-license")
    assert res.exit_code == 0, res.output
    registered = home / "models/t/tokenizer.json"
    registered.unlink()  # a hard link into the blob store: never write through it
    if broken == "malformed":
        registered.write_text('{"model": {"type": "BPE", "vocab": 5')
    cfg = write_config(
        tmp_path / "q.yaml", model_name="t", data_path=str(small_corpus(tmp_path / "q.txt"))
    )
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 3, res.output
    assert "are not intact: tokenizer.json" in res.stderr and "re-import" in res.stderr
    assert "Unexpected" not in res.stderr and "0 tokens" not in res.stderr
    assert snapshot(home) == before


# -- item 14: generation options and prompts --------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--temperature", "nan"], "--temperature must be a finite number, 0 (greedy) or more"),
        (["--temperature", "inf"], "not inf"),
        (["--temperature", "-inf"], "not -inf"),
        (["--temperature", "-0.5"], "not -0.5"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "not 1.5"),
        (["--top-p", "nan"], "not nan"),
        (["--top-k", "-1"], "--top-k must be 0 (off) or more"),
    ],
)
def test_generate_refuses_bad_sampling_options(cli, args: list[str], needle: str) -> None:
    res = cli("generate", "anything", *args)
    assert res.exit_code != 0, res.output
    assert needle in res.stderr and "Pass e.g." in res.stderr
    assert "Unexpected" not in res.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        ([b"--prompt", b"ab\xffc"], None, "--prompt is not valid UTF-8 text"),
        ([b"--chat", b"-m", b"hi", b"--system", b"\xfe"], None, "--system is not valid UTF-8"),
        ([b"-m", b"\xc3("], None, "--message is not valid UTF-8 text"),
        ([b"--chat"], b"hi \xff there\n", "The message on stdin is not valid UTF-8 text"),
    ],
)
def test_generate_refuses_text_that_is_not_utf8(
    tmp_path: Path, args: list[bytes], stdin: bytes | None, needle: str
) -> None:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}
    res = subprocess.run(
        [sys.executable, "-m", "llmforge", "--home", str(tmp_path), "generate", "x", *args],
        input=stdin or b"",
        capture_output=True,
        timeout=60,
        env=env,
    )
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode != 0, err
    assert needle in err and "Unexpected" not in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


# -- items 14 and 17: export and register on a full disk, and after a kill ---------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a trained tiny run ``tiny`` (checkpoint step 4)."""
    root = tmp_path_factory.mktemp("export-base")
    home = root / "ws"
    home.mkdir()
    cfg = write_config(root / "tiny.yaml", data_path=str(small_corpus(root / "c.txt")))
    res = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code == 0, res.output
    return home


@pytest.fixture
def ws(trained: Path, tmp_path: Path) -> Path:
    home = tmp_path / "ws"
    shutil.copytree(trained, home)
    return home


def _llmforge(home: Path, *args: str, limit: int | None = None, launcher: list[str] | None = None):
    """Run the console entry point in a child, under a file-size limit or a kill launcher."""

    def apply_limit() -> None:  # in the child before exec: a write past it fails with EFBIG
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    head = launcher or [sys.executable, "-m", "llmforge"]  # kill_at.command(...): killed at a step
    return subprocess.run(
        [*head, "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=apply_limit if limit else None,
    )


def _beside(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def test_export_on_a_full_disk_leaves_nothing(ws: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "deep" / "tiny-export"
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest), limit=16_000)
    assert res.returncode == 1, res.stderr
    assert f"Could not write the export to {dest}: File too large" in res.stderr
    assert "is the disk full" in res.stderr and "Unexpected" not in res.stderr
    assert not (tmp_path / "out").exists()  # not even the parents it made
    # An existing export replaced with --force stays whole when the new one cannot be written.
    dest.parent.mkdir(parents=True)
    assert _llmforge(ws, "ckpt", "export", "tiny", str(dest)).returncode == 0
    (dest / "notes.txt").write_text("mine")
    before = snapshot(dest)
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest), "--force", limit=16_000)
    assert res.returncode == 1 and "File too large" in res.stderr
    assert snapshot(dest) == before and _beside(dest) == []


def test_register_on_a_full_disk_changes_nothing(ws: Path) -> None:
    assert _llmforge(ws, "ckpt", "register", "tiny", "--name", "first").returncode == 0
    before = snapshot(ws)
    size = (ws / "models" / "registry.json").stat().st_size
    res = _llmforge(ws, "ckpt", "register", "tiny", "--name", "second", limit=size + 200)
    assert res.returncode == 1, res.stderr
    # The registry write is what hits the limit: the store's own message names it.
    assert "registry.json: File too large" in flat(res.stderr)
    assert "the model folders are unchanged" in flat(res.stderr)
    assert "Unexpected" not in res.stderr
    assert snapshot(ws) == before


# A launcher that SIGKILLs llmforge at one exact system call: the audit event EVENT (``open``
# for writing, or ``os.rename``) whose (source) path matches the regular expression PATTERN.
def test_a_killed_export_is_tidied_by_the_next_one(ws: Path, tmp_path: Path) -> None:
    dest = tmp_path / "exports" / "tiny"
    dest.parent.mkdir()
    # Killed while copying the weights into its hidden work folder.
    kill = kill_at.command("write", r"\.tiny\.export-\d+/model\.safetensors$")
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest), launcher=kill)
    assert res.returncode == -9, res.stderr
    assert not dest.exists() and [n.rsplit("-", 1)[0] for n in _beside(dest)] == [".tiny.export"]
    # A folder of an export that is still running (its PID lives: this test) is left alone.
    live = dest.parent / f".tiny.export-{os.getpid()}"
    live.mkdir()
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest))
    assert res.returncode == 0, res.stderr
    assert _beside(dest) == [live.name]
    live.rmdir()
    (dest / "notes.txt").write_text("mine")
    before = snapshot(dest)
    # Killed between its two renames: the old folder was moved aside, the new one not yet in.
    kill = kill_at.command("os.rename", r"\.tiny\.export-\d+$", arg=0)
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest), "--force", launcher=kill)
    assert res.returncode == -9, res.stderr
    assert not dest.exists()
    assert [n.rsplit("-", 1)[0] for n in _beside(dest)] == [".tiny.export", ".tiny.old"]
    # The next export puts the user's folder back before anything else, then refuses to
    # overwrite it without --force; with --force it replaces it.
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest))
    assert res.returncode == 1 and "is not empty" in res.stderr, res.stderr
    assert snapshot(dest) == before and _beside(dest) == []
    res = _llmforge(ws, "ckpt", "export", "tiny", str(dest), "--force")
    assert res.returncode == 0, res.stderr
    assert not (dest / "notes.txt").exists() and _beside(dest) == []


# -- items 13 and 24: the help of every command renders --------------------------------------
def _command_tree() -> list[tuple[list[str], object]]:
    """``(path, click command)`` of the root and every (sub-)command, found by walking the tree,
    so a new command is covered without touching this test."""
    import typer

    from llmforge.cli import app

    out: list[tuple[list[str], object]] = []

    def walk(cmd: object, path: list[str]) -> None:
        out.append((path, cmd))
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _command_tree()


def test_the_walk_finds_every_command() -> None:
    paths = [" ".join(p) for p, _ in COMMANDS]
    for known in ("", "train", "generate", "models import", "models list", "ckpt export"):
        assert known in paths
    assert len(paths) >= 15


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize(
    ("path", "cmd"), COMMANDS, ids=[" ".join(p) or "llmforge" for p, _ in COMMANDS]
)
def test_help_of_every_command_renders(path: list[str], cmd: object, flag: str) -> None:
    from typer.testing import CliRunner

    from llmforge.cli import app

    res = CliRunner().invoke(app, [*path, flag], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Usage: llmforge"), res.output
    assert "Unexpected error" not in res.output and "Traceback" not in res.output
    assert "<bool>" not in res.output  # a flag takes no value
    for param in getattr(cmd, "params", []):
        if param.param_type_name == "option" and not param.hidden:
            assert max(param.opts, key=len) in res.output  # every option is described


# -- item 24: no library warning between the prompt and the generated text --------------------
def test_qwen_generate_and_training_samples_print_no_future_warning(
    tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    import warnings

    home = tmp_path / "ws"
    home.mkdir()
    res = run_cli(home, "models", "import", str(tiny_qwen_repo), "--name", "q", "--accept-license")
    assert res.exit_code == 0, res.output
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # what a user's terminal shows
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), "generate", "q"]
    res = subprocess.run(
        [*cmd, "-p", "Hi", "-n", "6", "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Hi") and "Warning" not in res.stdout
    assert "FutureWarning" not in res.stderr and "past_key_values" not in res.stderr
    # Training samples generate the same way (in-process here: every warning recorded).
    cfg = write_config(
        tmp_path / "q.yaml",
        model_name="q",
        data_path=str(small_corpus(tmp_path / "q.txt", 4000)),
        max_steps=2,
        warmup_steps=1,
        sample_interval=1,
        save_interval=2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    assert "sample" in res.output.lower()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught


# -- item 24: tables stay readable at 80 columns ---------------------------------------------
def _body_rows(out: str) -> list[str]:
    """The lines of a table's body (between the header rule and the bottom border)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return lines[start + 1 : end]


@pytest.mark.parametrize("columns", ["80", "100", "200"])
def test_lists_fit_the_terminal_with_at_most_two_lines_a_row(
    ws: Path, columns: str, tiny_qwen_repo: Path
) -> None:
    from helpers import make_model
    from llmforge.workspace import Workspace

    space = Workspace(root=ws)
    names = ["qwen2.5-0.5b-instruct-base", "qwen2.5-0.5b-instruct-my-first-finetune", "t"]
    make_model(space, names[0], source="huggingface", architecture="qwen2", model_id="Q/Q")
    make_model(space, names[1], source="fine-tune", fine_tuned_from=names[0])
    make_model(space, names[2], architecture="custom-transformer")
    shutil.copytree(ws / "runs" / "tiny", ws / "runs" / "a-rather-long-run-name-for-tables")
    for cmd, count, first in ((("models", "list"), 3, names), (("ckpt", "list"), 2, ["tiny"])):
        res = run_cli_env(ws, {"COLUMNS": columns}, *cmd)
        assert res.exit_code == 0, res.output
        body = _body_rows(res.stdout)
        assert max(len(line) for line in res.stdout.splitlines()) <= int(columns), res.stdout
        assert len(body) <= 2 * count, res.stdout  # at most two lines a row
        for name in first:  # the names users type are never cut
            assert f"│ {name} " in res.stdout, res.stdout
        if columns == "200":  # a wide terminal shows every column, titles in full
            assert "fine_tuned_from" in res.stdout and "created" in res.stdout


def run_cli_env(home: Path, env: dict[str, str], *args: str):
    from typer.testing import CliRunner

    from llmforge.cli import app

    return CliRunner().invoke(app, ["--home", str(home), *args], env=env)


def test_a_missing_step_lists_the_runs_checkpoints(ws: Path) -> None:
    shutil.copytree(
        ws / "runs/tiny/checkpoints/step-000004", ws / "runs/tiny/checkpoints/step-000002"
    )
    before = snapshot(ws)
    for cmd in (["generate", "tiny/step-150", "-n", "2"], ["ckpt", "info", "tiny/step-150"]):
        res = run_cli(ws, *cmd)
        assert res.exit_code == 1, res.output
        want = "The run 'tiny' has no checkpoint at step 150; its checkpoints are at steps 2, 4"
        assert want in res.stderr, res.stderr
        assert "tiny/step-4" in res.stderr and "ckpt list tiny" in res.stderr
    res = run_cli(ws, "generate", "nope/step-3")  # no such run: the general message
    assert "neither a checkpoint nor a registered model" in res.stderr
    assert snapshot(ws) == before


# -- item 11/6: checkpoint fields and data paths are printed as text, never as markup -------
NASTY = "[/]x[bold]\x1b]0;pwned\x07\x1b[31m:thumbs_up:"


def _poison_meta(ckpt: Path) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["data"]["source"] = f"/data/{NASTY}.txt"
    meta["tokenizer"]["identifier"] = f"tok{NASTY}"
    meta["run_name"] = f"tiny{NASTY}"
    meta["config"]["data_path"] = f"/data/{NASTY}.txt"
    meta["lineage"] = [f"hf:Org/{NASTY}"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    # crafted to match its manifest, as a checkpoint from elsewhere can be: what it says must
    # still print as plain text
    write_manifest(ckpt)


def test_untrusted_checkpoint_fields_print_as_plain_text(ws: Path, tmp_path: Path) -> None:
    _poison_meta(ws / "runs/tiny/checkpoints/step-000004")
    for cmd in (
        ["ckpt", "info", "tiny"],
        ["ckpt", "list"],
        ["ckpt", "export", "tiny", str(tmp_path / f"out{NASTY}")],
        ["ckpt", "register", "tiny", "--name", "poisoned"],
        ["models", "info", "poisoned"],
    ):
        res = run_cli_env(ws, {"COLUMNS": "200"}, *cmd)
        assert res.exit_code == 0, (cmd, res.output)
        assert "\x1b" not in res.output and "\x07" not in res.output, (cmd, res.output)
        assert "👍" not in res.output, (cmd, res.output)
        if cmd[1] in ("info", "export"):  # list and register show none of the poisoned fields
            assert "[/]x[bold]" in res.output and ":thumbs_up:" in res.output, (cmd, res.output)


def test_a_data_path_with_markup_trains_and_prints_as_text(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    folder = tmp_path / "[" / "]data:thumbs_up:\x1b[31m"  # "[/]" in a path is "[" / "]"
    folder.mkdir(parents=True)
    data = small_corpus(folder / "c[bold].txt")
    cfg = write_config(tmp_path / "m.yaml", data_path=str(data), sample_interval=2)
    res = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "👍" not in res.output
    assert "[/]data:thumbs_up:" in res.output and "c[bold].txt" in res.output


def test_a_template_refusing_a_system_message_is_a_clean_chat_error(
    tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    from tiny_models import CHAT_TEMPLATE

    repo = tmp_path / "repo"
    shutil.copytree(tiny_qwen_repo, repo)
    refuse = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
    )
    (repo / "chat_template.jinja").write_text(refuse + CHAT_TEMPLATE, encoding="utf-8")
    home = tmp_path / "ws"
    home.mkdir()
    res = run_cli(home, "models", "import", str(repo), "--name", "t", "--accept-license")
    assert res.exit_code == 0, res.output
    res = run_cli(home, "generate", "t", "-m", "hi", "-n", "3")  # no system message: fine
    assert res.exit_code == 0, res.output
    res = run_cli(home, "generate", "t", "-m", "hi", "--system", "Be brief.", "-n", "3")
    assert res.exit_code == 1, res.output
    assert "The chat template of the model's tokenizer" in res.stderr
    assert "refused the conversation: System role not supported" in res.stderr
    assert "Unexpected" not in res.stderr
