"""Checkpoints of training runs (``runs/RUN/checkpoints/step-N``): layout, references,
metadata, manifests, loading, listing, and registering one as a model.
"""
