"""llmforge.fsutil: the one way files and folders that matter are written (old or new, never
half), what a failed write means, hashing and sizes. Faults are injected at the exact OS call
(``os.replace`` failing, ``os.fsync`` recorded) so each property is pinned, not raced."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from llmforge import fsutil


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_write_replaces_the_file_by_rename_never_in_place(tmp_path: Path) -> None:
    target = tmp_path / "registry.json"
    target.write_bytes(b"old content")
    target.chmod(0o640)
    with open(target, "rb") as reader:  # a reader that opened the old file keeps seeing it
        fsutil.atomic_write_bytes(target, b"new")
        assert reader.read() == b"old content"
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640  # the old file's mode is kept
    assert _leftovers(tmp_path, {"registry.json"}) == []


def test_atomic_write_of_a_new_file_creates_its_folder_with_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        fsutil.atomic_write_text(tmp_path / "a" / "b" / "x.txt", "é\n")
    finally:
        os.umask(old)
    out = tmp_path / "a" / "b" / "x.txt"
    assert out.read_bytes() == "é\n".encode()
    assert out.stat().st_mode & 0o777 == 0o664  # 0666 minus the umask, not mkstemp's 0600
    assert os.umask(old) == old  # the process umask was put back


def test_atomic_write_json_is_indented_utf8_with_a_final_newline(tmp_path: Path) -> None:
    fsutil.atomic_write_json(tmp_path / "m.json", {"name": "ü", "n": [1]})
    text = (tmp_path / "m.json").read_text("utf-8")
    assert text == '{\n  "name": "ü",\n  "n": [\n    1\n  ]\n}\n'
    assert json.loads(text) == {"name": "ü", "n": [1]}


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "registry.json"
    target.write_bytes(b"old")

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        fsutil.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"registry.json"}) == []


def test_atomic_writes_flush_the_data_and_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    fsutil.atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert len(synced) == 2 and synced[1] == str(tmp_path)  # the temp file, then the folder
    tmp = Path(synced[0])  # beside the file: a rename across filesystems is not atomic
    assert tmp.parent == tmp_path and tmp.name.startswith(".f.bin.") and tmp.name.endswith(".tmp")
    synced.clear()
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        (tmp_path / "tree" / name).write_text(name)
    fsutil.fsync_tree(tmp_path / "tree")
    tree = tmp_path / "tree"
    assert synced == [str(tree / "a"), str(tree / "sub" / "b"), str(tree)]


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "f.txt").write_text(content)
    return path


def test_publish_folder_puts_a_new_folder_in_place_flushed_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = _folder(tmp_path / ".new", "new")
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    fsutil.publish_folder(tmp, tmp_path / "final", tmp_path / ".old")
    assert len(synced) == 3  # f.txt, the folder, then the parent after the rename
    assert (tmp_path / "final" / "f.txt").read_text() == "new"
    assert _leftovers(tmp_path, {"final"}) == []


def test_publish_folder_replaces_an_existing_one_and_removes_the_old(tmp_path: Path) -> None:
    _folder(tmp_path / "final", "old")
    tmp = _folder(tmp_path / ".new", "new")
    fsutil.publish_folder(tmp, tmp_path / "final", tmp_path / ".old", sync=False)
    assert (tmp_path / "final" / "f.txt").read_text() == "new"
    assert _leftovers(tmp_path, {"final"}) == []


def test_publish_folder_puts_the_old_folder_back_when_the_new_cannot_move_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _folder(tmp_path / "final", "old")
    tmp = _folder(tmp_path / ".new", "new")
    real = os.replace
    calls: list[str] = []

    def second_fails(src: object, dst: object) -> None:
        calls.append(Path(str(dst)).name)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="I/O error"):
        fsutil.publish_folder(tmp, tmp_path / "final", tmp_path / ".old")
    assert calls == [".old", "final", "final"]  # aside, in (fails), back
    assert (tmp_path / "final" / "f.txt").read_text() == "old"
    assert not (tmp_path / ".old").exists() and (tmp / "f.txt").read_text() == "new"


def test_building_folder_publishes_on_success_and_removes_a_stale_temporary(
    tmp_path: Path,
) -> None:
    stale = _folder(tmp_path / ".tmp", "left by a killed run")
    with fsutil.building_folder(tmp_path / "final", stale, tmp_path / ".old") as work:
        assert work == stale and list(work.iterdir()) == []  # starts empty
        (work / "f.txt").write_text("new")
        assert not (tmp_path / "final").exists()  # nothing visible before the block ends
    assert (tmp_path / "final" / "f.txt").read_text() == "new"
    assert _leftovers(tmp_path, {"final"}) == []


def test_building_folder_that_fails_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    _folder(tmp_path / "final", "old")
    with (
        pytest.raises(KeyboardInterrupt),
        fsutil.building_folder(tmp_path / "final", tmp_path / ".tmp", tmp_path / ".old") as work,
    ):
        (work / "f.txt").write_text("half")
        raise KeyboardInterrupt
    assert (tmp_path / "final" / "f.txt").read_text() == "old"
    assert _leftovers(tmp_path, {"final"}) == []


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EFBIG, "File too large"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("safetensors: os error 28"), True),
        (RuntimeError("Disk quota exceeded while writing"), True),
        (RuntimeError("No space left"), True),
        (RuntimeError("os error 27"), True),
        (RuntimeError("File too large"), True),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_disk_full_is_told_apart_from_other_write_failures(error: Exception, full: bool) -> None:
    assert fsutil.is_disk_full(error) is full
    reason = fsutil.write_failure_reason(error)
    assert reason.endswith(" (is the disk full, or a file-size limit reached?)") is full
    hint = " (is the disk full, or a file-size limit reached?)" if full else ""
    assert reason == fsutil.failure_cause(error) + hint


def test_failure_cause_quotes_the_os_and_bounds_a_library_message() -> None:
    assert fsutil.failure_cause(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
    assert fsutil.failure_cause(OSError("plain")) == "plain"
    cause = fsutil.failure_cause(RuntimeError("x" * 1000))
    assert cause.startswith("x" * 150) and len(cause) < 260 and "1,000 long" in cause
    assert fsutil.failure_cause(RuntimeError("bad")) == "bad"


def test_sha256_file_hashes_the_whole_file_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 7)
    (tmp_path / "w").write_bytes(data)
    assert fsutil.sha256_file(tmp_path / "w") == hashlib.sha256(data).hexdigest()


def test_iter_files_lists_regular_files_sorted_without_symlinks(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("z", "b/a", "a"):
        (tmp_path / name).write_text(name)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    rel = [p.relative_to(tmp_path).as_posix() for p in fsutil.iter_files(tmp_path)]
    assert rel == ["a", "b/a", "z"]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (980_000, "980.0 KB"),
        (1_500_000, "1.5 MB"),
        (1_500_000_000, "1.5 GB"),
        (2 * 10**15, "2000.0 TB"),
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert fsutil.human_bytes(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (999, "999"),
        (1000, "1.0K"),
        (10**6, "1.0M"),
        (494_032_768, "494.0M"),
        (10**9, "1.0B"),
        (1_500_000_000, "1.5B"),
        (10**12, "1.0T"),
    ],
)
def test_human_count(n: int | None, text: str) -> None:
    assert fsutil.human_count(n) == text
