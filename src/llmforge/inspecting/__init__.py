"""llmforge runs: the workspace's training runs as they stand on disk (list, show, compare,
delete). Reading a run never imports torch and never takes its lock."""
