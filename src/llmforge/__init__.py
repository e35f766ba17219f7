"""llmforge: get a language model, fine-tune it locally, track its lineage, export it."""

__version__ = "0.1.0"
