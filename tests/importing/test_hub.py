"""Source parsing, file selection, license metadata and weight helpers (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.errors import InvalidSourceError
from llmforge.importing.file_selection import RemoteFile, path_problem, select_files
from llmforge.importing.licensing import read_front_matter, read_license
from llmforge.importing.pickled_weights import safetensors_name
from llmforge.importing.source import check_revision, parse_source


@pytest.mark.parametrize(
    ("text", "repo", "rev"),
    [
        ("Qwen/Qwen2-0.5B", "Qwen/Qwen2-0.5B", None),
        ("gpt2", "gpt2", None),
        ("https://huggingface.co/Qwen/Qwen2-0.5B", "Qwen/Qwen2-0.5B", None),
        ("https://huggingface.co/Qwen/Qwen2-0.5B/", "Qwen/Qwen2-0.5B", None),
        ("https://huggingface.co/Qwen/Qwen2-0.5B/tree/main", "Qwen/Qwen2-0.5B", "main"),
        ("https://hf.co/Qwen/Qwen2.5-0.5B/tree/v1.0", "Qwen/Qwen2.5-0.5B", "v1.0"),
        ("https://huggingface.co/org/m/tree/refs%2Fpr%2F3", "org/m", "refs/pr/3"),
        ("https://huggingface.co/models/org/m", "org/m", None),
    ],
)
def test_parse_hub_sources(text: str, repo: str, rev: str | None) -> None:
    src = parse_source(text)
    assert (src.kind, src.repo_id, src.revision) == ("hub", repo, rev)


def test_parse_url_of_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9999")
    src = parse_source("http://127.0.0.1:9999/Qwen/Tiny/tree/abc")
    assert (src.repo_id, src.revision) == ("Qwen/Tiny", "abc")


def test_parse_local_folder_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    src = parse_source("org/model")
    assert src.kind == "local" and src.path == (tmp_path / "org" / "model").resolve()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a/b/c",
        "has space/x",
        "../nope",
        "./missing-folder",
        "https://example.com/Qwen/Qwen2",
        "https://huggingface.co/datasets/org/data",
        "https://huggingface.co/org/m/blob/main/config.json",
        "ftp://huggingface.co/org/m",
        "org/..",
        "a--b/c",
    ],
)
def test_parse_rejects_bad_sources(text: str) -> None:
    with pytest.raises(InvalidSourceError):
        parse_source(text)


def _files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(path=n, size=10) for n in names]


def test_select_prefers_safetensors_and_skips_duplicates() -> None:
    sel = select_files(
        _files(
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "model.gguf",
            "tokenizer.json",
            "onnx/model.onnx",
            "modeling_qwen.py",
            ".gitattributes",
            "LICENSE",
            "README.md",
            "pytorch_model.bin.index.json",
            "merges.txt",
            "flax_model.msgpack",
        )
    )
    names = [f.path for f in sel.files]
    assert names == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "LICENSE", "README.md", "merges.txt"]
    )
    assert not sel.pickled_weights
    assert "pytorch_model.bin" in sel.skipped and "modeling_qwen.py" in sel.skipped
    assert sel.total_bytes == 60


def test_select_takes_pickles_only_without_safetensors() -> None:
    sel = select_files(_files("config.json", "pytorch_model.bin", "model.pt", "tokenizer.json"))
    assert sel.pickled_weights
    assert [f.path for f in sel.files] == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_license_from_card_and_file(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "---\nlicense: other\nlicense_name: qwen-research\nlicense_link: https://x/LICENSE\n"
        "---\n# Model\n"
    )
    lic = tmp_path / "LICENSE"
    lic.write_text("QWEN RESEARCH LICENSE\nline 2\n")
    info = read_license(readme, lic)
    assert info.label == "other:qwen-research"
    assert info.link == "https://x/LICENSE" and info.file == "LICENSE"
    assert info.excerpt.startswith("QWEN RESEARCH LICENSE")
    assert "https://x/LICENSE" in info.describe()


def test_license_unknown_and_bad_yaml(tmp_path: Path) -> None:
    assert read_front_matter("no metadata") == {}
    assert read_front_matter("---\n: [unclosed\n---\n") == {}
    info = read_license(None, None)
    assert not info.known and info.label == "unknown"
    assert read_license(None, None, {"license": "mit"}).label == "mit"


def test_safetensors_names() -> None:
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"
    assert (
        safetensors_name("pytorch_model-00001-of-00002.bin") == "model-00001-of-00002.safetensors"
    )


@pytest.mark.parametrize("rev", ["main", "v1.0", "refs/pr/3", "a" * 40, "release_2024+1", "x-y"])
def test_ref_shaped_revisions_pass(rev: str) -> None:
    assert check_revision(rev, "--revision") == rev


@pytest.mark.parametrize(
    "rev", ["", "/etc", "../x", "a/../b", "a//b", "a/", ".hidden", "-x", "v1.lock", "a b", "é"]
)
def test_other_revisions_are_refused(rev: str) -> None:
    with pytest.raises(InvalidSourceError, match="not a branch, tag or commit sha"):
        check_revision(rev, "--revision")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("config.json", True),
        ("sub/dir/file.txt", True),
        ("..\\..\\evil.json", False),
        ("../x", False),
        ("a/./b", False),
        ("/abs", False),
        ("C:evil", False),
        ("nul\x00.json", False),
        ("esc\x1b[2J.json", False),
        ("rtl\u202e.json", False),
        ("", False),
        ("x" * 256, False),
    ],
)
def test_repository_file_names(name: str, ok: bool) -> None:
    assert (path_problem(name) is None) == ok
