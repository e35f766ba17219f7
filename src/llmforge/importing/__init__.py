"""``llmforge models import``: a hub repository or a local folder into the registry."""
