"""Baseline pruning methods, one module each.

Every module in this package registers its pruner(s) with the decorators of
``qtbench.methods.registry`` (``register_sample_pruner`` / ``register_token_pruner``).
:func:`discover` imports all of them, so adding a baseline means dropping one
file here and naming it in the config: nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil


def discover() -> list[str]:
    """Import every module of this package (registering its pruners); return their names."""
    names = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{info.name}")
        names.append(info.name)
    return names
