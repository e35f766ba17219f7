"""The lineage list: built from the registry, split, rendered."""

from __future__ import annotations

from helpers import make_model
from llmforge.store import lineage
from llmforge.store.registry import ModelRegistry


def test_chain_ends_at_the_hub_origin(workspace):
    make_model(workspace, "base", source="huggingface", model_id="Org/Base")
    make_model(workspace, "ft1", source="fine-tune", fine_tuned_from="base", model_id="Org/Base")
    make_model(workspace, "ft2", source="fine-tune", fine_tuned_from="ft1", model_id="Org/Base")
    reg = ModelRegistry(workspace)
    assert lineage.registry_lineage(reg, "base") == ["base", "hf:Org/Base"]
    chain = lineage.registry_lineage(reg, "ft2")
    assert chain == ["ft2", "ft1", "base", "hf:Org/Base"]
    assert lineage.split(chain) == (["ft2", "ft1", "base"], "hf:Org/Base")
    assert lineage.chain_text("run r", chain) == "run r <- ft2 <- ft1 <- base <- hf:Org/Base"
    assert lineage.origin_label("hf:Org/Base") == "Org/Base (hub)"


def test_local_import_scratch_model_and_deleted_root(workspace):
    make_model(workspace, "loc", source="local", model_id="my-folder")
    make_model(workspace, "scratch", source="fine-tune")
    entry = make_model(workspace, "orphan", source="fine-tune", fine_tuned_from="gone")
    reg = ModelRegistry(workspace)
    assert lineage.registry_lineage(reg, "loc") == ["loc", "local:my-folder"]
    assert lineage.registry_lineage(reg, "scratch") == ["scratch"]
    assert lineage.chain_text("run r", []) == "run r (trained from scratch)"
    # a registered fine-tune remembers its origin even when its parent is deleted
    with reg.transaction() as models:
        models["orphan"] = entry.model_copy(update={"details": {"origin": "hf:Org/Gone"}})
    assert lineage.registry_lineage(reg, "orphan") == ["orphan", "gone", "hf:Org/Gone"]
    assert lineage.origin_label(lineage.split(["orphan", "gone", "hf:Org/Gone"])[1]) == (
        "Org/Gone (hub)"
    )
