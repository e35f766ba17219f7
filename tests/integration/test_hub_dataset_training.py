"""Training on hub datasets end to end: the tiny Qwen trained on a jsonl ``messages`` set and a
parquet Alpaca set served by the local hub, the data lineage in every checkpoint and in what
shows it (``ckpt info``, ``models info``, the export's model card), the cache (a second run
downloads nothing, ``HF_HUB_OFFLINE=1`` works) and a resume whose dataset revision moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_repos import messages_row, serve_datasets, write_jsonl
from helpers import assert_unchanged, flat, snapshot
from hubserver import HubRepo, LocalHub
from train_helpers import import_from_local_hub, run_cli

SETTINGS = {
    "model_name": "tiny-base",
    "block_size": 48,
    "batch_size": 2,
    "max_steps": 2,
    "warmup_steps": 1,
    "log_interval": 1,
    "eval_interval": 2,
    "eval_steps": 1,
    "sample_interval": 0,
    "save_interval": 2,
}


@pytest.fixture(scope="module")
def repos(hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, HubRepo]:
    return serve_datasets(hub, tmp_path_factory.mktemp("sets"))


@pytest.fixture
def home(
    hub: LocalHub,
    repos: dict[str, HubRepo],
    tiny_qwen_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A workspace with the tiny Qwen2 as 'tiny-base'; the local hub as HF_ENDPOINT."""
    ws = tmp_path / "ws"
    import_from_local_hub(hub, "Qwen/Qwen2-Tiny", tiny_qwen_repo, ws, "tiny-base")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-data"))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub.reset_counts()
    return ws


def _config(tmp_path: Path, name: str, **keys: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in {**SETTINGS, **keys}.items()))
    return path


def _meta(home: Path, run: str, step: int = 2) -> dict:
    return json.loads((home / f"runs/{run}/checkpoints/step-{step:06d}/meta.json").read_text())


def test_chat_set_lineage_shown_by_ckpt_info_models_info_the_card_and_the_gguf(
    home: Path, tmp_path: Path, repos: dict[str, HubRepo]
) -> None:
    sha = repos["chat"].sha
    cfg = _config(tmp_path, "chat", data_path="hf://datasets/org/chat", val_split="test")
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    data = _meta(home, "chat")["data"]
    assert data["format"] == "chat" and data["source"] == f"hf://datasets/org/chat@{sha}"
    train, val = data["hub"]["train"], data["hub"]["val"]
    assert (train["dataset"], train["sha"], train["config"], train["split"]) == (
        "org/chat",
        sha,
        "default",
        "train",
    )
    assert val["split"] == "test" and train["columns"] == {"messages": "messages"}
    assert train["fingerprint"].startswith("sha256:") and data["examples"]["val"] == 2

    info = run_cli(home, "ckpt", "info", "chat/step-2")
    assert info.exit_code == 0, info.output
    assert f"org/chat@{sha[:12]}" in flat(info.stdout) and "split test" in flat(info.stdout)
    assert run_cli(home, "ckpt", "register", "chat/step-2", "--name", "tiny-chat").exit_code == 0
    shown = run_cli(home, "models", "info", "tiny-chat")
    assert f"org/chat@{sha[:12]}" in flat(shown.stdout), shown.output
    out = tmp_path / "export"
    assert run_cli(home, "ckpt", "export", "chat/step-2", str(out)).exit_code == 0
    card = (out / "README.md").read_text()
    assert "datasets:\n- org/chat\n" in card and f"org/chat@{sha[:12]}" in card
    # The GGUF export records the dataset too (general.dataset.N.*), read back by gguf-py:
    # of the checkpoint, and of the model registered from it.
    for target, folder in (("chat/step-2", "gguf"), ("tiny-chat", "gguf-model")):
        res = run_cli(home, "ckpt", "export", target, str(tmp_path / folder), "--format", "gguf")
        assert res.exit_code == 0, res.output
        assert _gguf_datasets(tmp_path / folder) == [
            ("chat", "org", sha, "https://huggingface.co/datasets/org/chat")
        ]
        assert "datasets:\n- org/chat\n" in (tmp_path / folder / "README.md").read_text()


def _gguf_datasets(folder: Path) -> list[tuple[str, str, str, str]]:
    """(name, organization, version, repo url) of each general.dataset.N of the GGUF file."""
    import gguf

    (path,) = [p for p in folder.glob("*.gguf")]
    fields, keys = gguf.GGUFReader(path).fields, gguf.Keys.General
    return [
        tuple(
            fields[key.format(id=i)].contents()
            for key in (
                keys.DATASET_NAME,
                keys.DATASET_ORGANIZATION,
                keys.DATASET_VERSION,
                keys.DATASET_REPO_URL,
            )
        )
        for i in range(fields[keys.DATASET_COUNT].contents())
    ]


def test_alpaca_parquet_cached_once_then_offline(
    home: Path, tmp_path: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "hf://datasets/org/alpaca"  # the Alpaca prompt layout is long: a larger block
    cfg = _config(tmp_path, "alpaca", data_path=uri, val_split="test", block_size=256)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    assert "tokenized and kept in .cache/tokenized" in flat(res.output)
    data = _meta(home, "alpaca")["data"]  # the model has a chat template: Alpaca uses it
    assert data["format"] == "chat" and data["hub"]["train"]["alpaca_layout"] == "chat"
    assert _meta(home, "alpaca")["chat"]["source"] == "model"
    assert hub.downloads("org/alpaca") == 2
    hub.reset_counts()
    res = run_cli(home, "train", str(cfg), "--run-name", "again")
    assert res.exit_code == 0, res.output
    assert hub.downloads() == 0 and hub.log == [("GET", "/api/datasets/org/alpaca")]
    assert _meta(home, "again")["data"]["hub"] == _meta(home, "alpaca")["data"]["hub"]
    # nothing tokenized again (8 training + 3 test rows read back), and the same run
    assert "11 record(s) read from the cache" in flat(res.output), res.output
    assert _meta(home, "again")["train_loss"] == _meta(home, "alpaca")["train_loss"]
    hub.reset_counts()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli(home, "train", str(cfg), "--run-name", "offline")
    assert res.exit_code == 0, res.output
    assert (
        hub.log == []
        and _meta(home, "offline")["data"]["sha256"] == (_meta(home, "alpaca")["data"]["sha256"])
    )


def test_resume_refuses_a_moved_revision_unless_allowed(
    home: Path, tmp_path: Path, hub: LocalHub
) -> None:
    folder = tmp_path / "moving"
    write_jsonl(folder / "train.jsonl", [messages_row(i) for i in range(6)])
    repo = hub.add_dataset("org/moving", folder)
    old = repo.sha
    cfg = _config(tmp_path, "moving", data_path="hf://datasets/org/moving")
    assert run_cli(home, "train", str(cfg)).exit_code == 0
    repo.sha = "d" * 40  # a new commit on main
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--resume", "latest", "--max-steps", "4")
    assert res.exit_code != 0 and "Traceback" not in res.output
    message = flat(res.output)
    assert f"'main' was commit {old[:12]} and is now dddddddddddd" in message, message
    assert "--allow-data-change" in message and f"hf://datasets/org/moving@{old}" in message
    assert_unchanged(home, before)
    args = ("--resume", "latest", "--max-steps", "4", "--allow-data-change")
    res = run_cli(home, "train", str(cfg), *args)
    assert res.exit_code == 0, res.output
    assert "resuming on the new commit" in flat(res.output)
    data = _meta(home, "moving", 4)["data"]
    assert data["hub"]["train"]["sha"] == "d" * 40
    assert data["hub_before_resume"]["train"]["sha"] == old


BAD = [
    ({"data_path": "hf://datasets/org/nope"}, "org/nope"),
    ({"data_path": "hf://datasets/org/qa"}, "data_columns"),
    ({"data_path": "hf://datasets/org/alpaca", "data_split": "dev"}, "'train', 'test'"),
    ({"data_path": "hf://datasets/org/gated"}, "gated"),
    ({"data_path": "hf://datasets/org/x@../x"}, "hf://datasets/ORG/NAME"),
    ({"data_split": "test"}, "hub datasets only"),
]


def test_bad_hub_data_is_one_paragraph_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    before = snapshot(home)
    for keys, detail in BAD:
        res = run_cli(home, "train", str(_config(tmp_path, "bad", **keys)))
        assert res.exit_code != 0 and "Traceback" not in res.output, keys
        assert detail in flat(res.output), res.output
        assert_unchanged(home, before)
    assert not (home / "runs").exists()


def _eval(home: Path, *args: str) -> dict:
    res = run_cli(home, "eval", "tiny-base", "--json", "--no-record", *args)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    return row


def test_eval_takes_hub_datasets_masked_as_training_masks_them(
    home: Path, tmp_path: Path, repos: dict[str, HubRepo]
) -> None:
    # The chat set's test split (the default) scores as its local file does.
    hub_chat = _eval(home, "--data", "hf://datasets/org/chat")
    local = _eval(home, "--data", str(repos["chat"].folder / "chat/test.jsonl"))
    assert hub_chat == local and hub_chat["documents"] == 2
    # Alpaca rows for a model with a chat template: one user turn, only the output scored.
    convs = [
        [("user", f"Double {i}." + ("" if i % 2 else f"\n\nn = {i}")), ("assistant", str(2 * i))]
        for i in range(3)
    ]
    rows = [{"messages": [{"role": r, "content": c} for r, c in turns]} for turns in convs]
    as_chat = write_jsonl(tmp_path / "alpaca-chat.jsonl", rows)
    hub_alpaca = _eval(home, "--data", "hf://datasets/org/alpaca", "--data-split", "test")
    assert hub_alpaca == _eval(home, "--data", str(as_chat))
    train = _eval(home, "--data", "hf://datasets/org/alpaca", "--data-split", "train")
    assert train["documents"] == 8
    before = snapshot(home)
    res = run_cli(
        home, "eval", "tiny-base", "--data", "hf://datasets/org/alpaca", "--data-split", "dev"
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "'train', 'test'" in flat(res.output)
    assert_unchanged(home, before)
