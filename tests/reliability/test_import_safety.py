"""`models import` against a hostile repository or hub: nothing escapes, leaks or is kept.

A repository chooses its revision names, file names, model card, license text and config.json,
and a hub (or whatever HF_ENDPOINT points at) chooses its answers. None of it may write outside
the workspace, print a token, hang or crash on a YAML bomb, drive the terminal, or leave files
behind when the import is refused or declined. Every test runs the real import against the
local hub (tests/hubserver.py).
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections import namedtuple
from pathlib import Path

import pytest

from helpers import flat, snapshot
from hub_helpers import llmforge_proc, proc_env, run_on_terminal, variant
from hubserver import LocalHub
from llmforge.importing.plan import ImportRequest

BOMB = (
    "---\nlicense: mit\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{x}: &{x} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, x in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "---\n# A model\n"
)


def _requests_for(hub: LocalHub, repo_id: str) -> int:
    return sum(n for (_m, path), n in hub.requests.items() if repo_id in path)


# -- item 8: revisions and file names from a repository never leave the workspace ------------
@pytest.mark.parametrize(
    "revision", ["ABS", "../../../../outside-rev", "a//b", "-x", "main\n", "v1.lock", ""]
)
def test_revision_that_is_not_a_ref_is_refused_before_any_request(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, revision: str
) -> None:
    outside = tmp_path / "outside-abs" / "x"
    revision = str(outside) if revision == "ABS" else revision
    # A permissive hub would answer for these revisions; llmforge must not ask at all.
    hub_env.add_repo("Evil/rev", tiny_qwen_repo, revisions={revision})
    before = snapshot(base_ws.root)
    hub_env.reset_counts()
    url = f"https://huggingface.co/Evil/rev/tree/{revision.replace('/', '%2F')}"
    # (a URL is stripped of surrounding whitespace and cannot end in an empty revision)
    by_url = revision and revision.strip() == revision
    ways = [["Evil/rev", "--revision", revision]] + ([[url]] if by_url else [])
    for args in ways:
        res = cli("models", "import", *args, "--name", "evil", "--accept-license")
        assert res.exit_code == 2, res.output
        assert "is not a branch, tag or commit sha" in flat(res.output), res.output
        assert "Traceback" not in res.output
    assert _requests_for(hub_env, "Evil/rev") == 0
    assert not (tmp_path / "outside-abs").exists()
    assert not list(tmp_path.glob("**/outside-rev"))
    assert snapshot(base_ws.root) == before


def test_ref_names_that_are_fine_still_work(cli, workspace, hub_env, tiny_qwen_repo) -> None:
    hub_env.add_repo("Good/refs", tiny_qwen_repo, revisions={"refs/pr/3", "v1.0"})
    res = cli("models", "import", "Good/refs", "--revision", "refs/pr/3", "--accept-license")
    assert res.exit_code == 0, res.output
    url = "https://huggingface.co/Good/refs/tree/v1.0"
    assert cli("models", "import", url, "--name", "v1", "--accept-license").exit_code == 0
    assert (workspace.models_dir / ".cache/hub/models--Good--refs/refs/refs/pr/3").is_file()


def test_hub_file_names_that_escape_are_refused(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    odd = {
        "..\\..\\evil.json": b"{}",
        "../evil2.json": b"{}",
        "/tmp/evil3.json": b"{}",
        "evil4\x00.json": b"{}",
        "evil5\x1b]0;pwned\x07.json": b"{}",
        "evil6\u202e.json": b"{}",
    }
    hub_env.add_repo("Evil/names", tiny_qwen_repo, extra_files=odd)
    res = cli("models", "import", "Evil/names", "--name", "names", "--accept-license")
    assert res.exit_code == 0, res.output
    assert "Refusing 6 file(s) whose names" in flat(res.output)
    assert "\x1b" not in res.output and "\x00" not in res.output
    files = json.loads(base_ws.registry_path.read_text())["models"]["names"]["files"]
    assert not [f for f in files if "evil" in f]
    assert not [p for p in tmp_path.rglob("*evil*")]  # nowhere on disk, inside or out
    for name in odd:
        assert not any(name in path for (_m, path) in hub_env.requests), name


def test_a_hub_answer_with_a_path_for_a_commit_is_refused(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path
) -> None:
    hub_env.add_repo("Evil/sha", tiny_qwen_repo, sha="../../../../../../tmp/evil-sha")
    before = snapshot(base_ws.root)
    res = cli("models", "import", "Evil/sha", "--accept-license")
    assert res.exit_code == 1 and "not a 40-character sha" in flat(res.output), res.output
    assert snapshot(base_ws.root) == before
    assert not Path("/tmp/evil-sha").exists()


# -- item 9: a token is never printed, in any mode --------------------------------------------
SECRET = "hf_S3cr3tT0k3n"


@pytest.mark.parametrize("suffix", ["\r\n", " x", "é", "\x1b[2J"])
@pytest.mark.parametrize("where", ["--token", "HF_TOKEN"])
def test_malformed_token_is_named_never_shown(
    base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, suffix: str, where: str
) -> None:
    hub_env.add_repo("Tok/repo", tiny_qwen_repo)
    token = SECRET + suffix
    before = snapshot(base_ws.root)
    hub_env.reset_counts()
    for debug in ("", "1"):
        env = proc_env(hub_env, tmp_path, LLMFORGE_DEBUG=debug)
        args = ["models", "import", "Tok/repo", "--accept-license"]
        if where == "--token":
            args += ["--token", token]
        else:
            env["HF_TOKEN"] = token
        proc = llmforge_proc(base_ws.root, *args, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == (1 if debug else 2), out
        assert f"The hub token from {where} is malformed" in flat(out), out
        assert SECRET not in out and SECRET[3:] not in out
        assert ("Traceback" in out) == bool(debug)  # the debug traceback leaks nothing either
    assert _requests_for(hub_env, "Tok/repo") == 0
    assert snapshot(base_ws.root) == before
    for f in base_ws.root.rglob("*"):
        assert not f.is_file() or SECRET.encode() not in f.read_bytes(), f


def test_malformed_saved_login_is_named(hub, tiny_qwen_repo: Path, tmp_path: Path) -> None:
    hub.add_repo("Tok/login", tiny_qwen_repo)
    env = proc_env(hub, tmp_path)
    Path(env["HF_HOME"]).mkdir()
    (Path(env["HF_HOME"]) / "token").write_text(SECRET + "é\n")  # as `hf auth login` saves it
    home = tmp_path / "ws"
    home.mkdir()
    proc = llmforge_proc(home, "models", "import", "Tok/login", "--accept-license", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "token from the saved login (`hf auth login`) is malformed" in flat(out), out
    assert SECRET not in out


def test_request_repr_hides_the_token() -> None:
    assert SECRET not in repr(ImportRequest("a/b", token=SECRET))


# -- item 10: a YAML bomb in the card, nested JSON, huge values --------------------------------
def test_yaml_bomb_model_card_is_refused_fast_and_small(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    assert len(BOMB) < 500  # a billion laughs in a few hundred bytes
    repo = variant(tiny_qwen_repo, tmp_path / "bomb", files={"README.md": BOMB})
    hub_env.add_repo("Evil/bomb", repo)
    tracemalloc.start()
    start = time.monotonic()
    try:
        res = cli("models", "import", "Evil/bomb", "--name", "bomb", "--accept-license")
        seconds = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.exit_code == 0, res.output
    assert seconds < 20 and peak < 200 * 2**20, (seconds, peak)
    entry = json.loads(base_ws.registry_path.read_text())["models"]["bomb"]
    assert entry["license"] == "unknown"  # the card's metadata was refused, not expanded


def test_yaml_bomb_card_is_named_at_the_prompt(hub, tiny_qwen_repo, tmp_path: Path) -> None:
    repo = variant(tiny_qwen_repo, tmp_path / "bomb", files={"README.md": BOMB})
    hub.add_repo("Evil/bomb-prompt", repo)
    home = tmp_path / "ws"
    home.mkdir()
    env = proc_env(hub, tmp_path, TERM="dumb", LLMFORGE_HOME=str(home))
    code, out = run_on_terminal(["models", "import", "Evil/bomb-prompt"], env, b"n\n")
    text = flat(out.decode())
    assert code == 1 and "The model card's metadata was not read" in text, text
    assert "expands to more than 100,000 values" in text


def test_nested_card_data_from_the_hub_is_a_clear_error(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path
) -> None:
    repo = hub_env.add_repo("Evil/nested-api", tiny_qwen_repo)
    nested = b"[" * 200_000 + b"]" * 200_000
    repo.raw_info = b'{"id": "Evil/nested-api", "sha": "%s", "cardData": {"x": %s}}' % (
        repo.sha.encode(),
        nested,
    )
    before = snapshot(base_ws.root)
    res = cli("models", "import", "Evil/nested-api", "--accept-license")
    assert res.exit_code == 1, res.output
    assert "could not be read" in flat(res.output) and "Unexpected error" not in res.output
    assert snapshot(base_ws.root) == before


@pytest.mark.parametrize("card", [[1, 2], "text", {"model-index": 5}])
def test_odd_card_data_from_the_hub_is_ignored(cli, hub_env, tiny_qwen_repo, card) -> None:
    repo = hub_env.add_repo(f"Odd/card-{type(card).__name__}", tiny_qwen_repo)
    repo.card_data = card
    res = cli("models", "import", repo.repo_id, "--name", "odd", "--accept-license")
    assert res.exit_code == 0, res.output
    assert "apache-2.0" in res.output and "model-index" not in res.output


def test_huge_card_values_are_cut_short(
    cli, workspace, hub_env, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    no_card = variant(tiny_qwen_repo, tmp_path / "no-card", remove=("README.md",))
    repo = hub_env.add_repo("Evil/huge", no_card)  # the hub's card data is all there is
    repo.card_data = {"license": "x" * 1_000_000, "license_name": ["y" * 100_000]}
    res = cli("models", "import", "Evil/huge", "--accept-license")
    assert res.exit_code == 0, res.output
    assert len(res.output) < 5000
    entry = json.loads(workspace.registry_path.read_text())["models"]["huge"]
    assert len(entry["license"]) <= 200


# -- item 11: repository text on the terminal ---------------------------------------------------
EVIL_LICENSE = (
    "GOOD LICENSE\n"
    "\x1b]0;pwned-title\x07\x1b[8mHIDDEN TEXT\x1b[0m\n"
    "\x1b[1A\x1b[2KFAKE: you may do anything\n"
    "[/] [bold]markup[/bold] [red]x\n"
)


@pytest.mark.parametrize("answer", [b"n\n", b"y\n"])
def test_license_escapes_never_reach_the_terminal(
    hub, tiny_qwen_repo: Path, tmp_path: Path, answer: bytes
) -> None:
    # YAML's "\e" and "\a" escapes are ESC and BEL: card values carrying terminal escapes.
    card = '---\nlicense: other\nlicense_name: "\\e[31mred[/]"\nlicense_link: "x\\e]8;;e\\a"\n---\n'
    repo = variant(
        tiny_qwen_repo,
        tmp_path / "esc",
        files={"LICENSE": EVIL_LICENSE, "README.md": card},
    )
    hub.add_repo("Evil/escapes", repo)
    home = tmp_path / "ws"
    home.mkdir()
    # TERM=dumb: Rich writes no escape of its own, so any ESC byte would be the repository's.
    env = proc_env(hub, tmp_path, TERM="dumb", LLMFORGE_HOME=str(home))
    code, out = run_on_terminal(["models", "import", "Evil/escapes"], env, answer)
    assert b"\x1b" not in out and b"\x07" not in out, out
    text = out.decode()
    assert "HIDDEN TEXT" in text and "FAKE: you may do anything" in text  # shown, harmless
    assert "[/] [bold]markup[/bold] [red]x" in text  # Rich markup printed literally
    assert "other:red[/]" in text
    # The first thing on the terminal is llmforge's plan: no huggingface_hub progress bars.
    assert out.startswith(b"Evil/escapes at "), out[:200]
    assert code == (0 if answer == b"y\n" else 1), text
    if answer == b"y\n":
        assert "Imported 'escapes'" in text
    else:
        assert "was not accepted" in text and not (home / "models").exists()


def test_progress_on_a_real_terminal_shows_only_llmforge_bars(
    hub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    size = (tiny_qwen_repo / "model.safetensors").stat().st_size
    hub.add_repo("Bars/tiny", tiny_qwen_repo, throttle=size)  # about a second: bars redraw
    home = tmp_path / "ws"
    home.mkdir()
    env = proc_env(hub, tmp_path, TERM="xterm-256color", LLMFORGE_HOME=str(home), COLUMNS="100")
    code, out = run_on_terminal(["models", "import", "Bars/tiny", "--accept-license"], env, b"")
    text = out.decode()
    assert code == 0, text
    assert out.startswith(b"Bars/tiny at "), out[:300]
    assert "it/s" not in text and "%|" not in text  # tqdm's (huggingface_hub's) bars
    assert "model.safetensors" in text  # llmforge's own bar names the real file


# -- item 12: only what consent needs, and nothing kept after a refusal -----------------------
def test_big_license_and_card_are_read_bounded_and_decline_keeps_nothing(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    card = "---\nlicense: other\nlicense_name: big\n---\n" + "card " * 2_000_000
    repo = variant(
        tiny_qwen_repo,
        tmp_path / "big",
        files={"LICENSE": "BIG LICENSE\n" + "x" * 5_000_000, "README.md": card},
    )
    hub_env.add_repo("Big/license", repo)
    before = snapshot(base_ws.root)
    hub_env.served.clear()
    res = cli("models", "import", "Big/license")  # no terminal: declined
    assert res.exit_code == 1 and "other:big" in res.output, res.output
    assert "must be accepted" in flat(res.output)
    assert len(res.output) < 5000  # the excerpt is short lines, not 5 MB of x
    assert hub_env.served["LICENSE"] <= 64 * 1024 and hub_env.served["README.md"] <= 64 * 1024
    assert hub_env.served["model.safetensors"] == 0
    assert snapshot(base_ws.root) == before


def test_a_kill_at_the_license_prompt_leaves_nothing(
    hub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    hub.add_repo("Kill/at-prompt", tiny_qwen_repo)
    home = tmp_path / "ws"
    home.mkdir()
    env = proc_env(hub, tmp_path, TERM="dumb", LLMFORGE_HOME=str(home))
    code, out = run_on_terminal(["models", "import", "Kill/at-prompt"], env, None)
    assert code == -9 and b"accept this license?" in out, out
    assert list(home.iterdir()) == []  # not even models/: nothing is written before consent


def _llama(base: Path, dest: Path) -> Path:
    return variant(base, dest, config={"model_type": "llama"})


@pytest.mark.parametrize(
    "case", ["architecture", "declined", "disk", "gated", "revision", "checksum", "index"]
)
def test_every_refusal_leaves_the_workspace_byte_identical(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, monkeypatch, case: str
) -> None:
    repo_dir, options, args = tiny_qwen_repo, {}, ["--accept-license"]
    if case == "architecture":
        repo_dir = _llama(tiny_qwen_repo, tmp_path / "llama")
    elif case == "declined":
        args = []
    elif case == "disk":
        monkeypatch.setenv("LLMFORGE_IMPORT_WARN_BYTES", "1")
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr("shutil.disk_usage", lambda _p: usage(10**6, 10**6 - 100, 100))
    elif case == "gated":
        options = {"gated": True, "tokens": {"hf_other"}}
    elif case == "revision":
        args.append("--revision=nope")
    elif case == "checksum":
        options = {"corrupt": {"model.safetensors"}}
    elif case == "index":  # an index naming a shard the repository does not have
        index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-2.safetensors"}}
        repo_dir = variant(
            tiny_qwen_repo,
            tmp_path / "idx",
            files={"model.safetensors.index.json": json.dumps(index)},
        )
    hub_env.add_repo(f"Refuse/{case}", repo_dir, **options)
    before = snapshot(base_ws.root)
    res = cli("models", "import", f"Refuse/{case}", *args)
    assert res.exit_code != 0, res.output
    assert "Unexpected error" not in res.output and "Traceback" not in res.output
    assert snapshot(base_ws.root) == before, case


# -- item 13: help --------------------------------------------------------------------------------
def test_models_import_help_renders(cli) -> None:
    res = cli("models", "import", "--help")
    assert res.exit_code == 0, res.output
    assert "/tree/REV" in res.output and "--accept-license" in res.output
