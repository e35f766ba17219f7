"""``llmforge ckpt export``: a checkpoint as a folder that loads without llmforge."""
