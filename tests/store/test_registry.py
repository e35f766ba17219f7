"""ModelRegistry and ModelEntry: CRUD, the file on disk, validation, corruption, lineage."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from helpers import NAME_RE, make_model
from llmforge.errors import (
    InvalidModelNameError,
    ModelExistsError,
    ModelNotFoundError,
    RegistryCorruptError,
    RegistryError,
)
from llmforge.store.registry import ModelEntry, ModelRegistry, check_model_name, suggest_model_name


def entry(name: str, **kw) -> ModelEntry:
    kw.setdefault("source", "local")
    kw.setdefault("architecture", "custom-transformer")
    kw.setdefault("local_path", name)
    return ModelEntry(model_name=name, **kw)


# -- add / get / list / remove ---------------------------------------------------------------
def test_missing_file_is_empty_registry(workspace):
    reg = ModelRegistry(workspace)
    assert reg.list() == []
    assert reg.names() == []
    assert not reg.exists("x")
    assert not workspace.registry_path.exists()  # reading never creates it


def test_add_get_list_remove_round_trip(workspace):
    reg = ModelRegistry(workspace)
    a = make_model(workspace, "beta", model_id="Org/Beta", source="huggingface")
    b = make_model(workspace, "alpha", fine_tuned_from="beta")
    assert [e.model_name for e in reg.list()] == ["alpha", "beta"]
    assert reg.get("beta") == a
    # a fresh registry object reads the same thing back from disk
    again = ModelRegistry(workspace)
    assert again.get("alpha") == b
    assert again.get("alpha").files == b.files

    removed = reg.remove("alpha")
    assert removed == b
    assert reg.names() == ["beta"]
    assert (workspace.models_dir / "alpha").is_dir()  # remove() leaves the files alone


def test_file_on_disk_has_schema_version_and_entries(workspace):
    make_model(workspace, "m1")
    data = json.loads(workspace.registry_path.read_text())
    assert data["schema_version"] == 1
    assert set(data["models"]) == {"m1"}
    m = data["models"]["m1"]
    assert m["model_name"] == "m1"
    assert m["local_path"] == "m1"
    assert set(m["files"]) == {"config.json", "model.safetensors", "tokenizer/tokenizer.json"}
    assert m["files"]["model.safetensors"]["size"] == 512
    # no temp files are left next to it
    leftovers = [p.name for p in workspace.models_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_add_existing_name_fails_and_keeps_the_file(workspace):
    make_model(workspace, "m1")
    before = workspace.registry_path.read_bytes()
    with pytest.raises(ModelExistsError, match="m1"):
        ModelRegistry(workspace).add(entry("m1", architecture="other"))
    assert workspace.registry_path.read_bytes() == before
    ModelRegistry(workspace).add(entry("m1", architecture="other"), replace=True)
    assert ModelRegistry(workspace).get("m1").architecture == "other"


def test_remove_unknown_fails(workspace):
    make_model(workspace, "m1")
    before = workspace.registry_path.read_bytes()
    with pytest.raises(ModelNotFoundError):
        ModelRegistry(workspace).remove("nope")
    assert workspace.registry_path.read_bytes() == before


def test_exception_inside_transaction_writes_nothing(workspace):
    make_model(workspace, "m1")
    before = workspace.registry_path.read_bytes()
    reg = ModelRegistry(workspace)
    with pytest.raises(RuntimeError), reg.transaction() as models:
        models.pop("m1")
        raise RuntimeError("boom")
    assert workspace.registry_path.read_bytes() == before


# -- unknown names -----------------------------------------------------------------------------
def test_unknown_name_lists_names_and_suggests_closest(workspace):
    for n in ("qwen-0.5b-base", "qwen-0.5b-chat", "tiny"):
        make_model(workspace, n)
    with pytest.raises(ModelNotFoundError) as ei:
        ModelRegistry(workspace).get("qwen-0.5b-bas")
    text = str(ei.value)
    assert "No model named 'qwen-0.5b-bas'" in text
    assert "Did you mean 'qwen-0.5b-base'?" in text
    for n in ("qwen-0.5b-base", "qwen-0.5b-chat", "tiny"):
        assert n in text


def test_unknown_name_in_empty_registry_says_how_to_import(workspace):
    with pytest.raises(ModelNotFoundError) as ei:
        ModelRegistry(workspace).get("anything")
    assert "empty" in str(ei.value)
    assert "llmforge models import" in str(ei.value)


# -- name validation -----------------------------------------------------------------------
BAD_NAMES = [
    "",
    "a/b",
    "../evil",
    "..",
    ".hidden",
    "-dash",
    "_under",
    "has space",
    "Upper",
    "qwenA",
    "a\\b",
    "a\nb",
    "name\n",
    "x" * 65,
    "/abs",
    "é",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_rejected(name):
    with pytest.raises(InvalidModelNameError) as ei:
        check_model_name(name)
    # the hint proposes a name that is itself valid
    suggestion = re.search(r"--name '([^']*)'", str(ei.value)).group(1)
    assert check_model_name(suggestion) == suggestion
    with pytest.raises(ValidationError):
        entry(name, local_path="ok")


@pytest.mark.parametrize("name", ["a", "0", "qwen-0.5b-base", "a..b", "a_b.c-d", "x" * 64])
def test_good_names_accepted(name, workspace):
    assert check_model_name(name) == name
    assert entry(name).model_name == name


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=st.sampled_from("abzAZ09._-/\\ \n\t:é~$"), max_size=70))
def test_accepted_names_match_pattern_and_stay_inside_models(name, workspace):
    try:
        check_model_name(name)
    except InvalidModelNameError:
        assert not re.fullmatch(NAME_RE, name)
        return
    assert re.fullmatch(NAME_RE, name)
    models = workspace.models_dir.resolve()
    path = workspace.model_path(name)
    assert path.parent == models
    assert path.name == name


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.from_regex(NAME_RE, fullmatch=True))
def test_every_pattern_name_is_accepted(name, workspace):
    assert check_model_name(name) == name
    assert workspace.model_path(name).parent == workspace.models_dir.resolve()


@pytest.mark.parametrize("local_path", ["", "/etc", "../x", "a/../../x", "a\\..\\x"])
def test_local_path_escapes_rejected(local_path):
    with pytest.raises(ValidationError, match="local_path"):
        entry("m", local_path=local_path)


@pytest.mark.parametrize("parent", ["", "../x", "Org/Model", "[/bold]", "a b"])
def test_fine_tuned_from_must_be_a_model_name(parent):
    with pytest.raises(ValidationError, match="fine_tuned_from"):
        entry("m", fine_tuned_from=parent)


@settings(max_examples=200)
@given(text=st.text(max_size=100))
def test_suggested_names_are_valid(text):
    name = suggest_model_name(text)
    assert re.fullmatch(NAME_RE, name)
    assert check_model_name(name) == name


@pytest.mark.parametrize("fname", ["../x", "/etc/passwd", "a/../../b"])
def test_file_names_escapes_rejected(fname):
    with pytest.raises(ValidationError):
        entry("m", files={fname: {"size": 1, "sha256": "0" * 64}})


# -- corrupt files -------------------------------------------------------------------------
VALID_ENTRY = {
    "model_name": "m1",
    "source": "local",
    "architecture": "custom-transformer",
    "local_path": "m1",
    "created_at": "2026-01-01T00:00:00Z",
}

CORRUPT = {
    "not-json": (b'{"schema_version": 1, "models": {', "not valid JSON"),
    "not-utf8": (b"\xff\xfe\x00garbage", "not valid JSON"),
    "empty-file": (b"", "not valid JSON"),
    "a-list": (b"[]", "does not hold a JSON object"),
    "no-version": (json.dumps({"models": {}}).encode(), "schema_version None"),
    "future-version": (json.dumps({"schema_version": 99, "models": {}}).encode(), "99"),
    "bad-field": (
        json.dumps(
            {"schema_version": 1, "models": {"m1": {**VALID_ENTRY, "source": "ftp"}}}
        ).encode(),
        "models.m1.source",
    ),
    "unknown-field": (
        json.dumps({"schema_version": 1, "models": {"m1": {**VALID_ENTRY, "x": 1}}}).encode(),
        "models.m1.x",
    ),
    "key-mismatch": (
        json.dumps({"schema_version": 1, "models": {"other": VALID_ENTRY}}).encode(),
        "'other'",
    ),
    "bad-local-path": (
        json.dumps(
            {"schema_version": 1, "models": {"m1": {**VALID_ENTRY, "local_path": "../../etc"}}}
        ).encode(),
        "local_path",
    ),
    "bad-parent": (
        json.dumps(
            {"schema_version": 1, "models": {"m1": {**VALID_ENTRY, "fine_tuned_from": "[/b]"}}}
        ).encode(),
        "models.m1.fine_tuned_from",
    ),
    "bad-name": (
        json.dumps(
            {"schema_version": 1, "models": {"../x": {**VALID_ENTRY, "model_name": "../x"}}}
        ).encode(),
        "model_name",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_registry_is_reported_and_never_overwritten(case, workspace):
    data, phrase = CORRUPT[case]
    workspace.models_dir.mkdir()
    workspace.registry_path.write_bytes(data)
    reg = ModelRegistry(workspace)
    for action in (
        reg.list,
        lambda: reg.get("m1"),
        lambda: reg.add(entry("new")),
        lambda: reg.remove("m1"),
    ):
        with pytest.raises(RegistryCorruptError) as ei:
            action()
        assert str(workspace.registry_path) in str(ei.value)
        assert phrase in str(ei.value)
        assert "will not overwrite" in str(ei.value)
        assert workspace.registry_path.read_bytes() == data
    assert sorted(p.name for p in workspace.models_dir.iterdir()) in (
        ["registry.json"],
        [".registry.lock", "registry.json"],
    )


def test_registry_path_is_a_directory(workspace):
    workspace.registry_path.mkdir(parents=True)
    with pytest.raises(RegistryError) as ei:
        ModelRegistry(workspace).list()
    assert str(workspace.registry_path) in str(ei.value)


# -- lineage -------------------------------------------------------------------------------
def test_lineage_chain_and_children(workspace):
    make_model(workspace, "base", source="huggingface", model_id="Org/Base")
    make_model(workspace, "ft1", fine_tuned_from="base", source="fine-tune")
    make_model(workspace, "ft2", fine_tuned_from="ft1", source="fine-tune")
    make_model(workspace, "ft1b", fine_tuned_from="base", source="fine-tune")
    reg = ModelRegistry(workspace)
    assert reg.lineage("ft2") == ["ft1", "base"]
    assert reg.lineage("base") == []
    assert [c.model_name for c in reg.children("base")] == ["ft1", "ft1b"]
    assert reg.children("ft2") == []


def test_lineage_with_missing_parent_ends_there(workspace):
    make_model(workspace, "orphan", fine_tuned_from="gone")
    assert ModelRegistry(workspace).lineage("orphan") == ["gone"]


def test_lineage_cycle_terminates(workspace):
    make_model(workspace, "a", fine_tuned_from="c")
    make_model(workspace, "b", fine_tuned_from="a")
    make_model(workspace, "c", fine_tuned_from="b")
    make_model(workspace, "self", fine_tuned_from="self")
    reg = ModelRegistry(workspace)
    results: dict[str, list[str]] = {}

    def work() -> None:
        results["a"] = reg.lineage("a")
        results["self"] = reg.lineage("self")

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "lineage() does not terminate on a cycle"
    assert results == {"a": ["c", "b"], "self": []}


def test_rewrite_keeps_the_file_mode(workspace):
    make_model(workspace, "m1")
    workspace.registry_path.chmod(0o644)
    make_model(workspace, "m2")
    assert workspace.registry_path.stat().st_mode & 0o777 == 0o644


def test_new_registry_file_is_readable_by_others(workspace):
    old = os.umask(0o022)
    try:
        make_model(workspace, "m1")
    finally:
        os.umask(old)
    assert workspace.registry_path.stat().st_mode & 0o777 == 0o644
