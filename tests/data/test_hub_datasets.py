"""Hub datasets (``hf://datasets/...``) against the local hub: formats, lineage, caching,
offline use and bad input, read in-process through :func:`read_hub_data`.

The sets (tests/dataset_repos.py) are served once per module and, for the tests that do not
count requests, prepared once in a module-wide HF_HOME.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataset_repos import make_alpaca, messages_row, serve_datasets
from hubserver import HubRepo, LocalHub
from llmforge.config import TrainingConfig
from llmforge.data import hub_records
from llmforge.data.batches import load_data
from llmforge.data.chat_templates import encode_chat, resolve_chat_format
from llmforge.data.data_files import read_data_file
from llmforge.data.hub_records import read_hub_data
from llmforge.data.hub_uri import parse_hub_uri
from llmforge.errors import InvalidSourceError, LLMForgeError
from llmforge.modeling.tokenizers import HFTokenizer


@pytest.fixture(scope="module")
def repos(hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, HubRepo]:
    return serve_datasets(hub, tmp_path_factory.mktemp("sets"))


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-shared")


@pytest.fixture
def hf(
    hub: LocalHub, repos: dict[str, HubRepo], shared_home: Path, monkeypatch: pytest.MonkeyPatch
) -> LocalHub:
    """The local hub as HF_ENDPOINT, the module's HF_HOME, no token, no request counted."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(shared_home))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    hub.reset_counts()
    return hub


@pytest.fixture
def fresh(hf: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """As :func:`hf`, with an empty HF_HOME of this test."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return hf


def _error(uri: str, **kw: object) -> LLMForgeError:
    with pytest.raises(LLMForgeError) as info:
        read_hub_data(uri, **kw)
    return info.value


def test_alpaca_parquet_and_chat_jsonl_with_configs(hf: LocalHub, repos: dict) -> None:
    alpaca = read_hub_data("hf://datasets/org/alpaca", val_split="test")
    train = alpaca.lineage["train"]
    assert (train["sha"], train["config"], train["split"], train["rows"]) == (
        repos["alpaca"].sha,
        "default",
        "train",
        8,
    )
    assert alpaca.lineage["val"]["split"] == "test" and alpaca.lineage["val"]["rows"] == 3
    assert train["columns"] == {"instruction": "instruction", "input": "input", "output": "output"}
    assert alpaca.train.data.format == "prompt-completion"
    first = alpaca.train.data.records[0]
    assert first["prompt"].endswith("### Input:\nn = 0\n\n### Response:\n")
    assert first["completion"] == "0"

    chat = read_hub_data("hf://datasets/org/chat@v1", val_split="test")
    assert chat.train.data.format == "chat" and chat.lineage["train"]["revision"] == "v1"
    assert chat.train.data.source == f"hf://datasets/org/chat@{repos['chat'].sha}"
    local = read_data_file(str(repos["chat"].folder / "chat/train.jsonl"), "auto", False)
    assert list(chat.train.data.records) == local.records  # the same records, the same masks
    short = read_hub_data("hf://datasets/org/chat", config="short")
    assert short.lineage["train"]["config"] == "short" and short.lineage["train"]["rows"] == 2
    assert list(short.train.data.records) == [messages_row(6), messages_row(7)]


def test_alpaca_uses_the_models_chat_template_and_trains_only_the_output(
    hf: LocalHub, tiny_qwen_repo: Path
) -> None:
    tok = HFTokenizer(tiny_qwen_repo, "native", "tiny")  # it has a chat template
    cfg = TrainingConfig(data_path="hf://datasets/org/alpaca", val_split="test")
    data = load_data(cfg, tok)
    assert data.format == "chat" and data.hub["train"]["alpaca_layout"] == "chat"
    first = data.train.records[0]  # one user turn: the instruction, then the input
    assert first["messages"][0]["role"] == "user" and first["messages"][0]["content"].endswith(
        "\n\nn = 0"
    )
    assert first["messages"][1] == {"role": "assistant", "content": "0"}
    fmt = resolve_chat_format(tok)
    ids, trained = encode_chat(tok, fmt, first["messages"], train_on_prompt=False)
    assert "### Response" not in tok.decode(ids)  # not the Stanford layout
    trained_text = "".join(tok.decode([i]) for i, m in zip(ids, trained, strict=True) if m)
    assert trained_text == "0<|im_end|>\n"  # the answer only, as for chat data
    plain = HFTokenizer(tiny_qwen_repo, "native", "tiny")
    plain.hf.chat_template = None  # a model without a chat template: the Stanford layout
    assert load_data(cfg, plain).format == "prompt-completion"
    assert load_data(cfg.model_copy(update={"chat_template": "chatml"}), plain).format == "chat"
    # A resumed run keeps the layout it started with (recorded in data.hub).
    assert load_data(cfg, tok, {"train": {"alpaca_layout": "prompt"}}).format == (
        "prompt-completion"
    )


def test_sharegpt_text_and_data_columns(hf: LocalHub) -> None:
    share = read_hub_data("hf://datasets/org/sharegpt").train
    roles = [m["role"] for m in share.data.records[0]["messages"]]
    assert share.data.format == "chat" and roles == ["system", "user", "assistant"]
    assert share.lineage["columns"] == {"conversations": "conversations"}
    text = read_hub_data("hf://datasets/org/text").train
    assert text.data.format == "jsonl-text" and text.data.records[0]["text"].startswith("Doc 0")
    cols = {"prompt": "question", "completion": "answer"}
    qa = read_hub_data("hf://datasets/org/qa", data_columns=cols).train
    assert qa.data.format == "prompt-completion" and qa.lineage["columns"] == cols
    assert qa.data.records[0] == {"prompt": "q0", "completion": "a0"}


def test_unrecognised_columns_name_them_and_the_data_columns_key(hf: LocalHub) -> None:
    unknown = _error("hf://datasets/org/qa")
    assert "'question', 'answer', 'id'" in str(unknown) and "data_columns" in str(unknown)
    wrong = _error("hf://datasets/org/qa", data_columns={"prompt": "nope"})
    assert "nope" in str(wrong) and "'question', 'answer', 'id'" in str(wrong)
    half = _error("hf://datasets/org/text", data_columns={"prompt": "text"})
    assert "does not use it" in str(half)


def test_second_run_downloads_nothing_and_offline_reads_the_cache(
    fresh: LocalHub, repos: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = read_hub_data("hf://datasets/org/alpaca", val_split="test")
    assert fresh.downloads("org/alpaca") == 2  # one parquet file per split
    home = Path(os.environ["HF_HOME"])  # the HF_HOME of now, not of datasets' import
    assert (home / "hub/datasets--org--alpaca/refs/main").read_text() == repos["alpaca"].sha
    assert any((home / "hub/datasets--org--alpaca/blobs").iterdir())  # raw files there too
    assert list((home / "datasets").glob("org___alpaca/default/0.0.0/*/*-train.arrow"))
    fresh.reset_counts()
    again = read_hub_data("hf://datasets/org/alpaca", val_split="test")
    assert fresh.downloads() == 0
    assert fresh.log == [("GET", "/api/datasets/org/alpaca")]  # did the branch move?
    assert again.lineage == first.lineage
    fresh.reset_counts()
    pinned = read_hub_data(f"hf://datasets/org/alpaca@{repos['alpaca'].sha}", val_split="test")
    assert (
        fresh.log == []
        and pinned.lineage["train"]["fingerprint"] == (first.lineage["train"]["fingerprint"])
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = read_hub_data("hf://datasets/org/alpaca", val_split="test")
    assert offline.lineage == first.lineage and fresh.log == []
    never = _error("hf://datasets/org/text")
    assert type(never).__name__ == "HubUnreachableError" and "org/text" in str(never)
    unprepared = _error(f"hf://datasets/org/text@{'a' * 40}")
    assert type(unprepared).__name__ == "HubUnreachableError" and "never prepared" in str(
        unprepared
    )
    assert fresh.log == []


def test_offline_takes_the_pinned_commit_not_the_newest(
    fresh: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = fresh.add_dataset("org/moving", make_alpaca(tmp_path / "v1", n_train=4))
    old = repo.sha
    assert read_hub_data("hf://datasets/org/moving").lineage["train"]["rows"] == 4
    repo.folder, repo.sha = make_alpaca(tmp_path / "v2", n_train=6), "c" * 40
    assert read_hub_data("hf://datasets/org/moving").lineage["train"]["rows"] == 6
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pinned = read_hub_data(f"hf://datasets/org/moving@{old}").lineage["train"]
    assert (pinned["rows"], pinned["sha"]) == (4, old)
    assert read_hub_data("hf://datasets/org/moving").lineage["train"]["sha"] == "c" * 40


BAD = [
    ({"uri": "hf://datasets/org/nope"}, "RepoNotFoundError", "org/nope"),
    ({"uri": "hf://datasets/org/alpaca@v9"}, "RevisionNotFoundError", "'v9'"),
    ({"uri": "hf://datasets/org/gated"}, "GatedRepoError", "HF_TOKEN"),
    ({"uri": "hf://datasets/org/alpaca", "split": "dev"}, "DataError", "'train', 'test'"),
    ({"uri": "hf://datasets/org/chat", "config": "nope"}, "DataError", "'short'"),
    ({"uri": "hf://datasets/org/empty", "split": "test"}, "DataError", "is empty"),
    ({"uri": "hf://datasets/org/broken"}, "DataError", "could not be read"),
    ({"uri": "hf://datasets/org/bad"}, "BadRecordError", "row 2"),
    ({"uri": "hf://datasets/org/huge"}, "BadRecordError", "MiB per row"),
    ({"uri": "hf://datasets/org/alpaca/x.parquet"}, "DataError", "'x.parquet'"),
]


def test_bad_input_is_one_clear_paragraph_naming_the_dataset(
    fresh: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_records, "MAX_ROW_BYTES", 4096)
    monkeypatch.chdir(tmp_path)
    for call, error, detail in BAD:
        kw = dict(call)
        e = _error(kw.pop("uri"), **kw)
        message = str(e)
        assert type(e).__name__ == error, (call, message)
        assert call["uri"].split("/")[3].split("@")[0] in message and detail in message, message
        assert "\n" not in message and e.hint
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert not any(not f.startswith("hf-home/") for f in left)  # only the HF cache is written
    assert not any("/refs/" in f for f in left)  # a refused load records no revision
    assert not any(f.startswith("hf-home/hub/datasets--org--gated") for f in left)


def test_gated_needs_a_granted_token_and_bad_rows_can_be_skipped(
    hf: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    denied = _error("hf://datasets/org/gated")
    assert type(denied).__name__ == "GatedRepoError" and "refused" in str(denied)
    assert "hf_other" not in str(denied) + str(denied.hint)
    monkeypatch.setenv("HF_TOKEN", "hf_sec ret")  # never sent: refused before any request
    malformed = _error("hf://datasets/org/gated")
    assert type(malformed).__name__ == "MalformedTokenError" and "whitespace" in str(malformed)
    assert "hf_sec" not in str(malformed) + str(malformed.hint)
    monkeypatch.setenv("HF_TOKEN", "hf_ok")
    assert read_hub_data("hf://datasets/org/gated").lineage["train"]["rows"] == 8
    monkeypatch.delenv("HF_TOKEN")
    skipped = read_hub_data("hf://datasets/org/bad", skip_bad_lines=True).train
    assert len(skipped.data.skipped) == 1 and skipped.lineage["rows"] == 1


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://datasets/org/name", ("org/name", None, None)),
        ("hf://datasets/org/name@v1.0", ("org/name", "v1.0", None)),
        (
            "hf://datasets/org/n@" + "a" * 40 + "/data/x.parquet",
            ("org/n", "a" * 40, "data/x.parquet"),
        ),
        ("hf://datasets/org/name@refs/pr/3/data", ("org/name", "refs/pr/3", "data")),
        ("hf://datasets/org/n@refs%2Fconvert%2Fparquet", ("org/n", "refs/convert/parquet", None)),
        ("hf://datasets/org/name/data/*.jsonl", ("org/name", None, "data/*.jsonl")),
    ],
)
def test_uri_parses(uri: str, expected: tuple) -> None:
    ref = parse_hub_uri(uri)
    assert (ref.repo_id, ref.revision, ref.path) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "hf://models/org/name",
        "https://huggingface.co/datasets/org/name",
        "hf://datasets/name",
        "hf://datasets/org/na--me",
        "hf://datasets/../name",
        "hf://datasets/org/name@../../etc",
        "hf://datasets/org/name@main.lock",
        "hf://datasets/org/name/../../x",
        "hf://datasets/org/name/a\\b",
        "hf://datasets/org/name?revision=x",
        "hf://datasets/org/name@v1/\x1b[2J",
    ],
)
def test_uri_refused_before_any_request(uri: str) -> None:
    with pytest.raises(InvalidSourceError, match="hf://datasets/ORG/NAME"):
        parse_hub_uri(uri)


def test_server_speaks_tree_paths_info_and_ranges(hf: LocalHub, repos: dict) -> None:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = HfApi(endpoint=hf.url, token=False)
    repo, sha = "org/chat", repos["chat"].sha
    top = list(api.list_repo_tree(repo, repo_type="dataset", revision=sha))
    assert {(type(e).__name__, e.path) for e in top} == {
        ("RepoFolder", "chat"),
        ("RepoFile", "README.md"),
    }
    deep = api.list_repo_tree(repo, "chat", repo_type="dataset", recursive=True, expand=True)
    files = [e for e in deep if isinstance(e, RepoFile)]
    assert [f.path for f in files] == ["chat/test.jsonl", "chat/train.jsonl"]
    assert all(f.last_commit is not None and f.last_commit.oid == sha for f in files)
    info = api.get_paths_info(repo, ["chat", "README.md", "nope"], repo_type="dataset")
    assert [type(e) for e in info] == [RepoFolder, RepoFile]
    url = f"{hf.url}/datasets/{repo}/resolve/{sha}/README.md"
    part = httpx2.get(url, headers={"Range": "bytes=0-2"})
    assert (part.status_code, part.content) == (206, b"---")
    assert part.headers["X-Repo-Commit"] == sha
    lfs = httpx2.head(f"{hf.url}/datasets/org/alpaca/resolve/main/data/test-00000-of-00001.parquet")
    assert lfs.status_code == 302 and lfs.headers["X-Linked-Etag"]
