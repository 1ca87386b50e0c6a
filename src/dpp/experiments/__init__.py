"""Experiment-side code (datasets, reference models, trainer, CLI); never imported by the core."""
