"""``llmforge serve``: an OpenAI-compatible HTTP server over ``llmforge.inference``."""
