"""``llmforge eval``: held-out loss side by side, lm-evaluation-harness tasks, eval records."""
