"""``llmforge generate``: a checkpoint or registry model on a device, and sampling from it."""
