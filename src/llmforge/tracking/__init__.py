"""Where a run reports: the callbacks the trainer calls, and ``metrics.jsonl``."""
