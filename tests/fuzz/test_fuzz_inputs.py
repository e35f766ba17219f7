"""Fuzzed input a user types or hands over: training configs, data files, command arguments.

Configs and data only ever reach ``train --dry-run`` here (which must write nothing, whatever
it is given); arguments go to the commands that take names, references, paths and numbers.
"""

from __future__ import annotations

import csv
import io
import json

import yaml
from fuzz_sandbox import FUZZ, Sandbox
from hypothesis import given
from hypothesis import strategies as st
from json_mutations import HOSTILE_STRINGS, JSON_VALUES

from llmforge.config import TrainingConfig
from train_helpers import TINY

KEYS = sorted(TrainingConfig.model_fields)
PLAUSIBLE = st.one_of(
    st.integers(min_value=-3, max_value=70),
    st.sampled_from([0.0, 1e-3, 0.5, 1.0, 2.0, 1e30, float("nan"), float("inf")]),
    st.sampled_from(["auto", "bf16", "fp32", "lora", "full", "chat", "text", "cuda", "fsdp"]),
    st.sampled_from(["base", "scratch", "corpus.txt", "../corpus.txt", "runs", "models"]),
    st.sampled_from([{"r": 2}, {"r": -1, "alpha": "x"}, {"target_modules": []}, [], {}]),
    JSON_VALUES,
)


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A config file's text: the tiny valid config with keys changed, added or removed."""
    doc = {**TINY, "data_path": "../corpus.txt", "max_steps": 4, "sample_interval": 0}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        doc[key] = draw(PLAUSIBLE)
    if draw(st.booleans()):
        doc[draw(st.one_of(st.text(max_size=10), HOSTILE_STRINGS))] = draw(JSON_VALUES)
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        doc.pop(key, None)
    shape = draw(st.sampled_from(["yaml", "json", "raw"]))
    if shape == "raw":
        return draw(
            st.one_of(
                st.text(max_size=200),
                st.sampled_from(["a: &x [*x]", "- - - - [", "!!python/object:os.system x", ""]),
            )
        )
    try:
        return yaml.safe_dump(doc) if shape == "yaml" else json.dumps(doc)
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return json.dumps(doc, ensure_ascii=True)


TEXTS = st.one_of(st.text(max_size=60), HOSTILE_STRINGS)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "", "x"]),
            "content": TEXTS,
        }
    ),
    max_size=4,
)
RECORDS = st.one_of(
    st.fixed_dictionaries({"text": TEXTS}),
    st.fixed_dictionaries({"prompt": TEXTS, "completion": TEXTS}),
    st.fixed_dictionaries({"messages": MESSAGES}),
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
    JSON_VALUES,
)


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A data file's name and bytes: JSONL records, a CSV, a JSON document or raw bytes."""
    kind = draw(st.sampled_from(["jsonl", "jsonl", "csv", "json", "txt"]))
    if kind == "jsonl":
        lines = [json.dumps(r, allow_nan=True) for r in draw(st.lists(RECORDS, max_size=12))]
        lines += draw(st.lists(st.sampled_from(["", "{", "[" * 10_000, "\ufeff{}"]), max_size=2))
        return "data.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass")
    if kind == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        header = draw(st.sampled_from([["text"], ["prompt", "completion"], ["a", "b"], []]))
        writer.writerow(header)
        for _ in range(draw(st.integers(0, 8))):
            writer.writerow([draw(TEXTS) for _ in header or [0]])
        bom = "\ufeff" if draw(st.booleans()) else ""
        return "data.csv", (bom + out.getvalue()).encode("utf-8", "surrogatepass")
    if kind == "json":
        doc = draw(st.one_of(st.lists(RECORDS, max_size=8), JSON_VALUES))
        return "data.json", json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    return "data.txt", draw(st.binary(max_size=300))


@FUZZ
@given(text=configs())
def test_fuzzed_config(sandbox: Sandbox, text: str) -> None:
    sandbox.reset()
    path = sandbox.root / "fuzzed.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    sandbox.run("config", "train", str(path), "--dry-run", must_not_write=True)


@FUZZ
@given(
    file=data_files(),
    data_format=st.sampled_from(["auto", "text", "jsonl-text", "prompt-completion", "chat"]),
    skip_bad_lines=st.booleans(),
)
def test_fuzzed_data_file(
    sandbox: Sandbox, file: tuple[str, bytes], data_format: str, skip_bad_lines: bool
) -> None:
    sandbox.reset()
    name, body = file
    path = sandbox.root / name
    path.write_bytes(body)
    args = ["--set", f"data_path={path}", "--set", f"data_format={data_format}"]
    args += ["--set", f"skip_bad_lines={str(skip_bad_lines).lower()}"]
    sandbox.run("data file", "train", str(sandbox.config), "--dry-run", *args, must_not_write=True)


# Names over the file system's limits (ENAMETOOLONG) get a branch of their own: as one of many
# hostile strings they came up too rarely to be tried.
TOO_LONG = st.sampled_from(
    ["a" * 5000, "x/" * 3000, "scratch/" + "s" * 5000, "scratch/step-" + "9" * 5000, "b" * 256]
)
ARG = st.one_of(
    HOSTILE_STRINGS,
    TOO_LONG,
    st.text(max_size=60),
    st.sampled_from(["scratch", "base", "scratch/step-000004", "-1", "1e9"]),
)
# A valid new name half the time, so the command gets past the name check to the argument.
NAME = st.one_of(st.sampled_from(["fresh", "again", "base"]), ARG)
NUMBER = st.one_of(
    st.sampled_from(["0", "-1", "nan", "inf", "1e308", str(2**70), "0.5", "x", ""]), ARG
)
COMMANDS = {
    "models info": lambda d: ("models", "info", d(ARG)),
    "models delete": lambda d: ("models", "delete", d(ARG), "--yes"),
    "models import": lambda d: ("models", "import", d(ARG), "--name", d(NAME)),
    "ckpt info": lambda d: ("ckpt", "info", d(ARG)),
    "ckpt register": lambda d: ("ckpt", "register", d(ARG), "--name", d(NAME)),
    "ckpt export": lambda d: ("ckpt", "export", d(ARG), d(ARG)),
    "generate": lambda d: (
        "generate",
        d(ARG),
        "-p",
        d(TEXTS),
        "-n",
        d(NUMBER),
        "-t",
        d(NUMBER),
        "--top-k",
        d(NUMBER),
        "--top-p",
        d(NUMBER),
        "--seed",
        d(NUMBER),
    ),
    "train --set": lambda d: ("train", "{config}", "--dry-run", "--set", f"{d(ARG)}={d(ARG)}"),
    "train flags": lambda d: (
        "train",
        "{config}",
        "--dry-run",
        "--max-steps",
        d(NUMBER),
        "--stop-at",
        d(NUMBER),
        "--run-name",
        d(ARG),
    ),
    "train --resume": lambda d: ("train", "{config}", "--dry-run", "--resume", d(ARG)),
}


@FUZZ
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_fuzzed_arguments(sandbox: Sandbox, data: st.DataObject, command: str) -> None:
    # A hub id goes to the suite's HF_ENDPOINT, a closed local port: refused at once.
    sandbox.reset()
    args = COMMANDS[command](data.draw)
    args = tuple(a.replace("{config}", str(sandbox.config)) for a in args)
    if command == "ckpt export" and not args[3].startswith("/"):
        args = (*args[:3], str(sandbox.root / "out" / args[3][:200]))
    sandbox.run(command, *args)
