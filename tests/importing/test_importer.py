"""The import pipeline against the local hub: success, caching, sharing and every failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from helpers import assert_unchanged, snapshot
from hubserver import LocalHub
from llmforge import errors
from llmforge.checkpoints.model_users import delete_model
from llmforge.importing.pipeline import import_model
from llmforge.importing.plan import ImportHooks, ImportRequest
from llmforge.store.model_files import validate_entry
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace

TOKEN = "hf_secret_token_123"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root)


@pytest.fixture
def repo_id(hub_env: LocalHub, tiny_qwen_repo: Path, request: pytest.FixtureRequest) -> str:
    """A fresh repository id serving the tiny model (per test, so counts are per test)."""
    rid = f"Qwen/{request.node.name.replace('[', '-').replace(']', '')[:60]}"
    hub_env.add_repo(rid, tiny_qwen_repo, revisions={"v1"})
    return rid


def _import(ws: Workspace, source: str, **kw: object):
    kw.setdefault("accept_license", True)
    return import_model(ws, ImportRequest(source, **kw))  # type: ignore[arg-type]


def _snapshot(ws: Workspace) -> dict[str, str]:
    """Every file of the workspace, hidden ones (``models/.cache``, ``.staging``) included."""
    return snapshot(ws.root)


def _assert_unchanged(ws: Workspace, before: dict[str, str]) -> None:
    assert_unchanged(ws.root, before)


def test_import_by_id_records_everything(ws: Workspace, repo_id: str, hub_env: LocalHub) -> None:
    result = _import(ws, repo_id)
    e = ModelRegistry(ws).get(result.entry.model_name)
    assert e.model_name == repo_id.split("/")[1].lower()[:64].rstrip("-._")
    assert e.source == "huggingface" and e.model_id == repo_id
    assert e.revision == hub_env.repos[repo_id].sha
    assert e.architecture == "qwen2" and e.tokenizer == "native"
    assert e.license == "apache-2.0" and e.license_accepted_at is not None
    assert e.num_parameters == 98880  # what transformers reports for the tiny model
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(e.files)
    assert e.disk_bytes == sum(f.size for f in e.files.values())
    assert validate_entry(ws, e).ok
    # Each file once, plus config.json and the card's start, read (not kept) before consent.
    assert hub_env.downloads(repo_id) == len(e.files) + 2


def test_import_by_url_with_revision_then_reimport_downloads_nothing(
    ws: Workspace, repo_id: str, hub_env: LocalHub
) -> None:
    first = _import(ws, f"{hub_env.url}/{repo_id}/tree/v1", name="a")
    assert first.entry.details["requested_revision"] == "v1"
    hub_env.reset_counts()
    again = _import(ws, f"https://huggingface.co/{repo_id}", name="b", revision="v1")
    assert hub_env.downloads() == 0
    assert again.downloaded_files == [] and set(again.reused_files) == set(first.entry.files)
    a = ws.models_dir / "a" / "model.safetensors"
    b = ws.models_dir / "b" / "model.safetensors"
    assert a.stat().st_ino == b.stat().st_ino  # two names, one copy on disk

    size = a.stat().st_size
    assert delete_model(ws, "a").bytes_freed == 0  # b still uses every file
    assert b.is_file() and validate_entry(ws, ModelRegistry(ws).get("b")).ok
    freed = delete_model(ws, "b").bytes_freed
    assert freed >= size
    blobs = list((ws.models_dir / ".cache").rglob("blobs/*"))
    assert [p for p in blobs if p.is_file()] == []


def test_import_from_local_folder(ws: Workspace, tiny_qwen_repo: Path) -> None:
    e = _import(ws, str(tiny_qwen_repo), name="local-tiny").entry
    assert e.source == "local" and e.revision is None and e.model_id == str(tiny_qwen_repo)
    assert e.num_parameters == 98880 and e.license == "apache-2.0"
    assert validate_entry(ws, e).ok
    e2 = _import(ws, str(tiny_qwen_repo), name="local-two").entry
    one = ws.models_dir / e.local_path / "model.safetensors"
    two = ws.models_dir / e2.local_path / "model.safetensors"
    assert one.stat().st_ino == two.stat().st_ino


def test_gated_repo_needs_token(ws: Workspace, hub_env: LocalHub, tiny_qwen_repo: Path) -> None:
    hub_env.add_repo("org/gated", tiny_qwen_repo, gated=True, tokens={TOKEN})
    before = _snapshot(ws)
    with pytest.raises(errors.GatedRepoError) as info:
        _import(ws, "org/gated")
    assert "token" in str(info.value)
    _assert_unchanged(ws, before)
    with pytest.raises(errors.GatedRepoError, match="no access yet"):
        _import(ws, "org/gated", token="hf_wrong")
    e = _import(ws, "org/gated", token=TOKEN).entry
    assert e.model_name == "gated"
    assert TOKEN not in ws.registry_path.read_text()
    assert f"Bearer {TOKEN}" in hub_env.auth_seen


@pytest.mark.parametrize(
    ("source", "kw", "error"),
    [
        ("org/does-not-exist", {}, errors.RepoNotFoundError),
        ("REPO", {"revision": "no-such-branch"}, errors.RevisionNotFoundError),
        ("REPO", {"name": "Bad Name"}, errors.InvalidModelNameError),
        ("https://huggingface.co/REPO/tree/main", {"revision": "v1"}, errors.InvalidSourceError),
    ],
)
def test_hub_errors_change_nothing(
    ws: Workspace, repo_id: str, source: str, kw: dict, error: type
) -> None:
    before = _snapshot(ws)
    with pytest.raises(error):
        _import(ws, source.replace("REPO", repo_id), **kw)
    _assert_unchanged(ws, before)


def test_hub_unreachable(ws: Workspace, hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(errors.HubUnreachableError, match="Cannot reach"):
        _import(ws, "Qwen/anything")


def test_corrupt_file_is_refused(ws: Workspace, hub_env: LocalHub, tiny_qwen_repo: Path) -> None:
    _import(ws, str(tiny_qwen_repo), name="existing")
    before = _snapshot(ws)
    hub_env.add_repo("org/corrupt", tiny_qwen_repo, corrupt={"model.safetensors"})
    with pytest.raises(errors.ChecksumMismatchError, match=r"model\.safetensors"):
        _import(ws, "org/corrupt")
    _assert_unchanged(ws, before)
    hub_env.repos["org/corrupt"].corrupt.clear()  # the bad blob was discarded: retry works
    assert _import(ws, "org/corrupt").entry.model_name == "corrupt"


def test_non_lfs_file_checked_against_git_oid(
    ws: Workspace, hub_env: LocalHub, tiny_qwen_repo: Path
) -> None:
    hub_env.add_repo("org/badjson", tiny_qwen_repo, corrupt={"tokenizer.json"})
    before = _snapshot(ws)
    with pytest.raises(errors.ChecksumMismatchError, match="git blob sha1"):
        _import(ws, "org/badjson")
    _assert_unchanged(ws, before)


def test_name_taken_and_force(ws: Workspace, repo_id: str, tiny_qwen_repo: Path) -> None:
    _import(ws, str(tiny_qwen_repo), name="tiny")
    before = _snapshot(ws)
    with pytest.raises(errors.ModelExistsError) as info:
        _import(ws, repo_id, name="tiny")
    assert "--name" in str(info.value) and "--force" in str(info.value)
    _assert_unchanged(ws, before)
    result = _import(ws, repo_id, name="tiny", force=True)
    assert result.replaced and ModelRegistry(ws).get("tiny").source == "huggingface"
    assert ModelRegistry(ws).names() == ["tiny"]


def test_unsupported_architecture(
    ws: Workspace, hub_env: LocalHub, tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    llama = tmp_path / "llama"
    shutil.copytree(tiny_qwen_repo, llama)
    cfg = json.loads((llama / "config.json").read_text())
    cfg["model_type"] = "llama"
    (llama / "config.json").write_text(json.dumps(cfg))
    hub_env.add_repo("org/llama", llama)
    before = _snapshot(ws)
    with pytest.raises(errors.UnsupportedArchitectureError, match="qwen2, qwen3"):
        _import(ws, "org/llama")
    with pytest.raises(errors.UnsupportedArchitectureError):
        _import(ws, str(llama))
    _assert_unchanged(ws, before)
    assert hub_env.downloads("org/llama") == 2  # only config.json and README.md were fetched


def test_declined_license_writes_nothing(ws: Workspace, repo_id: str, hub_env: LocalHub) -> None:
    before = _snapshot(ws)
    asked = []
    hooks = ImportHooks(confirm_license=lambda info: asked.append(info.label) or False)
    with pytest.raises(errors.LicenseNotAcceptedError):
        import_model(ws, ImportRequest(repo_id), hooks)
    assert asked == ["apache-2.0"]
    _assert_unchanged(ws, before)
    assert hub_env.downloads(repo_id) == 2  # the card and config, never the weights


def test_not_enough_disk(ws: Workspace, repo_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**6, 10**6 - 1000, 1000))
    warnings: list[str] = []
    monkeypatch.setenv("LLMFORGE_IMPORT_WARN_BYTES", "1000")
    before = _snapshot(ws)
    with pytest.raises(errors.InsufficientDiskError, match="free"):
        import_model(
            ws, ImportRequest(repo_id, accept_license=True), ImportHooks(on_warning=warnings.append)
        )
    assert warnings and "above" in warnings[0]
    _assert_unchanged(ws, before)


def _bin_repo(tmp_path: Path, tiny_qwen_repo: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    repo = tmp_path / "binrepo"
    shutil.copytree(tiny_qwen_repo, repo)
    state = load_file(repo / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: shared storage
    torch.save(state, repo / "pytorch_model.bin")
    (repo / "model.safetensors").unlink()
    return repo


def test_pickled_weights_are_converted(
    ws: Workspace, hub_env: LocalHub, tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    from safetensors.torch import load_file

    repo = _bin_repo(tmp_path, tiny_qwen_repo)
    hub_env.add_repo("org/binonly", repo)
    e = _import(ws, "org/binonly").entry
    assert "model.safetensors" in e.files and "pytorch_model.bin" not in e.files
    assert e.details["converted_from"] == ["pytorch_model.bin"]
    tensors = load_file(ws.models_dir / e.local_path / "model.safetensors")
    original = load_file(tiny_qwen_repo / "model.safetensors")
    assert all((tensors[k] == v).all() for k, v in original.items())
    assert validate_entry(ws, e).ok
    local = _import(ws, str(repo), name="binlocal").entry
    assert local.files["model.safetensors"] == e.files["model.safetensors"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(
    ws: Workspace, hub_env: LocalHub, tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    import pickle

    repo = _bin_repo(tmp_path, tiny_qwen_repo)
    marker = tmp_path / "pwned"
    (repo / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    hub_env.add_repo("org/evil", repo)
    before = _snapshot(ws)
    with pytest.raises(errors.UnsafeWeightsError, match="refused"):
        _import(ws, "org/evil")
    assert not marker.exists()
    _assert_unchanged(ws, before)


def test_offline_import_uses_the_cache(
    ws: Workspace, repo_id: str, hub_env: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _import(ws, repo_id, name="online")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_env.reset_counts()
    e = _import(ws, repo_id, name="offline").entry
    assert sum(hub_env.requests.values()) == 0
    assert e.revision == first.entry.revision and e.files == first.entry.files
    with pytest.raises(errors.HubUnreachableError, match="HF_HUB_OFFLINE"):
        _import(ws, "org/never-imported")


def test_interrupt_leaves_nothing(ws: Workspace, repo_id: str) -> None:
    before = _snapshot(ws)

    def interrupt(name: str, size: int) -> None:
        if name == "model.safetensors":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_model(
            ws, ImportRequest(repo_id, accept_license=True), ImportHooks(on_file_start=interrupt)
        )
    # Ctrl-C is not a refusal: the registry and models/ are as they were, but the whole,
    # verified files downloaded so far stay in the hub cache for the retry (as the hf CLI does).
    after = _snapshot(ws)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed and all(k.startswith(("models/.cache/", "models/")) for k in changed)
    assert not [k for k in changed if not k.startswith("models/.cache/") and k != "models/"]
    assert not [k for k in changed if k.endswith(".incomplete") or ".staging" in k]
    assert _import(ws, repo_id).entry.files  # and a later import works


def test_failed_registry_write_rolls_back(
    ws: Workspace, repo_id: str, tiny_qwen_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmforge.store.registry as registry_module

    _import(ws, repo_id, name="keep")
    before = _snapshot(ws)

    def broken(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "atomic_write_json", broken)
    with pytest.raises(errors.RegistryError, match="No space left on device"):
        _import(ws, str(tiny_qwen_repo), name="keep", force=True)
    with pytest.raises(errors.RegistryError, match="registry and the model folders are unchanged"):
        _import(ws, repo_id, name="new")
    _assert_unchanged(ws, before)
    assert validate_entry(ws, ModelRegistry(ws).get("keep")).ok
