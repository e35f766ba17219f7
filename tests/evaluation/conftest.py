"""Fixtures of the evaluation tests: a tiny Qwen2 as llmforge loads it, and a LoRA fine-tune.

The model comes from ``tiny_qwen_repo`` (tests/conftest.py, built once per session); every
model here is an llmforge adapter, so the code under test is the code ``llmforge eval`` runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def base(tiny_qwen_repo: Path):
    """The tiny Qwen2 as ``Qwen2Adapter`` with its ``HFTokenizer``, in eval mode."""
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.modeling.tokenizers import HFTokenizer

    tok = HFTokenizer(tiny_qwen_repo)
    adapter = Qwen2Adapter.load(tiny_qwen_repo, tok)
    adapter.model.eval()
    return adapter


@pytest.fixture(scope="session")
def tuned(tiny_qwen_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A fine-tune: llmforge's ``lora.attach`` with random B (unmerged), and its saved folder."""
    from llmforge.adapters import peft_lora
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.modeling.tokenizers import HFTokenizer

    adapter = Qwen2Adapter.load(tiny_qwen_repo, HFTokenizer(tiny_qwen_repo))
    torch.manual_seed(2)
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    peft_lora.attach(adapter, settings)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    peft_lora.save(adapter, folder)
    adapter.model.eval()
    return adapter, folder
