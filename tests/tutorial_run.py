"""Run the commands of docs/tutorial-qwen.md and print what a user sees (the tutorial's output).

    python tests/tutorial_run.py > /tmp/tutorial-output.txt

The hub is tests/hubserver.py serving a tiny random Qwen2 (tests/tiny_models.py) under the
real name ``Qwen/Qwen2-0.5B``, so the command lines are exactly those a user types against the
real Hugging Face Hub; sizes, losses, speeds and the generated text are the tiny model's.
Every command runs in a fresh workspace (a temporary folder holding a copy of configs/) as a
subprocess, like a user's shell, without a terminal (so progress is plain log lines).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from hubserver import LocalHub  # noqa: E402
from tiny_models import build_tiny_qwen  # noqa: E402

# The tutorial's commands, in order ("python -c" lines run a snippet of the tutorial).
COMMANDS = [
    "llmforge models import Qwen/Qwen2-0.5B --name qwen-0.5b-base --accept-license",
    "llmforge models import Qwen/Qwen2-0.5B --name qwen-0.5b-base --accept-license --force",
    "llmforge models list",
    "llmforge models info qwen-0.5b-base",
    "llmforge train configs/qwen-base.yaml --max-steps 40 --stop-at 20",
    "llmforge train configs/qwen-base.yaml --max-steps 40 --resume latest",
    "llmforge ckpt list qwen-base",
    'llmforge generate qwen-base --prompt "def fibonacci(n):" --max-new-tokens 24 --seed 0',
    "llmforge ckpt register qwen-base --name qwen-0.5b-ft",
    "llmforge train configs/qwen-finetuned.yaml --max-steps 20",
    "llmforge models info qwen-0.5b-ft",
    "llmforge ckpt info qwen-finetuned",
    "llmforge ckpt export qwen-finetuned exports/qwen-0.5b-ft2",
    "cat exports/qwen-0.5b-ft2/README.md",
    "python load_export.py",
]

LOAD_EXPORT = """\
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "exports/qwen-0.5b-ft2"
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
inputs = tokenizer("def fibonacci(n):", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))
"""
# transformers' own progress bars would clutter the output shown in the tutorial.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="llmforge-tutorial-") as tmp_name:
        tmp = Path(tmp_name)
        repo = build_tiny_qwen(tmp / "tiny-qwen")
        ws = tmp / "llmforge"
        ws.mkdir()
        shutil.copytree(ROOT / "configs", ws / "configs")
        (ws / "load_export.py").write_text(LOAD_EXPORT, encoding="utf-8")
        bindir = Path(sys.executable).parent
        env = {
            **os.environ,
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "COLUMNS": "120",
            **QUIET,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for var in ("LLMFORGE_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "LLMFORGE_DEBUG"):
            env.pop(var, None)
        with LocalHub() as hub:
            hub.add_repo("Qwen/Qwen2-0.5B", repo)
            env["HF_ENDPOINT"] = hub.url
            for command in COMMANDS:
                argv = shlex.split(command)
                if argv[0] == "python":
                    argv[0] = sys.executable
                res = subprocess.run(
                    argv,
                    cwd=ws,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=900,
                )
                text = res.stdout.replace(str(ws), "~/llmforge")
                text = text.replace(str(tmp), "/tmp")
                print(f"$ {command}")
                print(text.rstrip())
                print(f"[exit code {res.returncode}]\n", flush=True)
                if res.returncode != 0:
                    return res.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
