"""Fuzzed files llmforge reads back: registry.json, meta.json, trainer_state.json, manifests.

The workspace's own files, damaged or forged (by a crash in another tool, a sync client, a
hand edit or an attacker), must never crash a command or be "repaired" by one: each command
works or refuses with one paragraph, and a refusal changes nothing.
"""

from __future__ import annotations

import json

from fuzz_sandbox import FUZZ, Sandbox
from hypothesis import given
from hypothesis import strategies as st
from json_mutations import mutated_json

from llmforge.checkpoints.manifest import write_manifest

STEP = "runs/scratch/checkpoints/step-000004"
REGISTRY_COMMANDS = [
    ("models", "list"),
    ("models", "info", "base"),
    ("models", "validate"),
    ("models", "delete", "base", "--yes"),
    ("generate", "base", "-n", "2", "-t", "0"),
    ("ckpt", "list"),
    ("ckpt", "register", "scratch", "--name", "again"),
]
CHECKPOINT_COMMANDS = [
    ("ckpt", "list"),
    ("ckpt", "info", "scratch"),
    ("generate", "scratch", "-n", "2", "-t", "0"),
    ("ckpt", "register", "scratch", "--name", "again"),
    ("models", "validate"),
    ("train", "{config}", "--resume", "latest", "--max-steps", "5", "--dry-run"),
]


def _registry(sandbox: Sandbox) -> dict:
    return json.loads((sandbox.base / "ws/models/registry.json").read_text())


def _pristine(sandbox: Sandbox, name: str) -> dict:
    return json.loads((sandbox.base / "ws" / STEP / name).read_text())


def test_registry_is_fuzzable(fuzz_base) -> None:
    # The strategies below start from a real registry: make sure it is the one we think.
    assert "base" in json.dumps(json.loads((fuzz_base / "ws/models/registry.json").read_text()))


@FUZZ
@given(data=st.data())
def test_fuzzed_registry(sandbox: Sandbox, data: st.DataObject) -> None:
    sandbox.reset()
    forged = data.draw(mutated_json(_registry(sandbox)), label="registry.json")
    (sandbox.home / "models/registry.json").write_bytes(forged)
    command = data.draw(st.sampled_from(REGISTRY_COMMANDS), label="command")
    sandbox.run("registry.json", *command)


@FUZZ
@given(
    data=st.data(),
    name=st.sampled_from(["meta.json", "trainer_state.json", "manifest.json", "config.json"]),
    reseal=st.booleans(),
)
def test_fuzzed_checkpoint_files(
    sandbox: Sandbox, data: st.DataObject, name: str, reseal: bool
) -> None:
    sandbox.reset()
    forged = data.draw(mutated_json(_pristine(sandbox, name)), label=name)
    step = sandbox.home / STEP
    (step / name).write_bytes(forged)
    if reseal and name != "manifest.json":
        # A forged file with a matching manifest: the checks behind the manifest must hold too.
        write_manifest(step)
    command = data.draw(st.sampled_from(CHECKPOINT_COMMANDS), label="command")
    command = tuple(a.replace("{config}", str(sandbox.config)) for a in command)
    sandbox.run(f"checkpoint {name}", *command)
