"""Experiment-side code (datasets, reference models, trainer, CLI); never imported by the core.

Importing the package registers the built-in training methods
(:mod:`dpp.experiments.builtin_methods`).
"""

from . import builtin_methods as _builtin_methods  # noqa: F401 (registers the methods)
