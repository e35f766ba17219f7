"""store/blobs.py in-process: shared files stay read-only, a file that cannot be hard-linked is
copied, the hashes an import checks files against, and pruning frees exactly the bytes no model
uses (never while an import holds the cache)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from llmforge.store import blobs
from llmforge.workspace import Workspace


def _ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.models_dir.mkdir(parents=True)
    return ws


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_adopted_file_is_shared_read_only_and_moved_when_it_is_ours(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    src = tmp_path / "converted.safetensors"
    src.write_bytes(b"w" * 300)
    os.chmod(src, 0o640)
    dst = ws.models_dir / "m" / "model.safetensors"
    digest = blobs.adopt(ws, src, dst, move=True)
    blob = blobs.blob_dir(ws) / digest
    assert digest == hashlib.sha256(b"w" * 300).hexdigest()
    assert not src.exists()  # our temporary file moved in, not copied
    assert dst.samefile(blob) and dst.read_bytes() == b"w" * 300
    assert _mode(dst) == 0o440  # no write bit through any name; the rest kept
    # Adopting again (a re-import of the same file) keeps the one shared file.
    again = tmp_path / "again.bin"
    again.write_bytes(b"w" * 300)
    assert blobs.adopt(ws, again, dst) == digest and again.exists()
    assert dst.samefile(blob) and blob.stat().st_nlink == 2


def test_where_hard_links_are_impossible_a_read_only_copy_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    link = tmp_path / "link.bin"
    link.symlink_to(src)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dst = tmp_path / "models" / "m" / "sub" / "w.bin"  # folders that do not exist yet
    blobs.link_or_copy(link, dst)
    assert dst.read_bytes() == b"weights" and not dst.is_symlink()
    assert not dst.samefile(src) and _mode(dst) & 0o222 == 0


def test_hashes_are_sha256_and_gits_blob_id_also_past_one_chunk(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over 1 MiB: more than one read
    path = tmp_path / "f"
    path.write_bytes(data)
    sha256, git = blobs.hash_file(path)
    assert sha256 == hashlib.sha256(data).hexdigest()
    # git's object id of a file: sha1 over "blob <size>\0" and the bytes (`git hash-object`)
    assert git == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_the_bytes_a_delete_frees_are_those_no_other_name_holds(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "own.bin").write_bytes(b"o" * 10)
    (folder / "shared.bin").write_bytes(b"s" * 100)
    os.link(folder / "shared.bin", tmp_path / "elsewhere.bin")  # another model's link
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)
    (folder / "link.bin").symlink_to(outside)  # deleting the link frees nothing
    assert blobs.unshared_bytes(folder) == 10


def _hub_file(ws: Workspace, repo: str, name: str, data: bytes) -> tuple[Path, Path]:
    """A huggingface_hub cache entry: a blob and the snapshot link to it."""
    root = blobs.hub_cache_dir(ws) / repo
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = root / "snapshots" / "abc123" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return blob, link


def test_pruning_frees_every_unused_blob_and_drops_only_dangling_links(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    unused_blob, unused_link = _hub_file(ws, "models--a--b", "w.bin", b"u" * 700)
    used_blob, used_link = _hub_file(ws, "models--a--b", "config.json", b"c" * 50)
    (ws.models_dir / "m").mkdir()
    os.link(used_blob, ws.models_dir / "m" / "config.json")  # a model holds it
    local = tmp_path / "local.bin"
    local.write_bytes(b"l" * 300)
    digest = blobs.adopt(ws, local, tmp_path / "gone.bin")
    (tmp_path / "gone.bin").unlink()  # its model was deleted
    assert blobs.prune_cache(ws) == 700 + 300
    assert not unused_blob.exists() and not (blobs.blob_dir(ws) / digest).exists()
    assert not unused_link.is_symlink()  # dangling: huggingface_hub fetches it again
    assert used_link.read_bytes() == b"c" * 50 and used_blob.exists()


def test_nothing_is_pruned_while_an_import_holds_the_cache(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    blob, link = _hub_file(ws, "models--a--b", "w.bin", b"u" * 700)
    with blobs.cache_in_use(ws):  # an import that fetched it and has not committed yet
        assert blobs.prune_cache(ws) == 0
        assert blob.exists() and link.read_bytes() == b"u" * 700
    assert blobs.prune_cache(ws) == 700
