"""Training data: data files, the built-in corpus, chat templates and loss masks,
samplers, and a run's batches.
"""
