"""The embedded default: a synthetic world (corpus, SFT data with planted
problems, five lm-eval tasks) and a tiny base model pretrained on it.

``pretrain_base_model`` is imported lazily so that building the world does not
pull in torch/transformers.
"""

from qtbench.world.generate import DEFAULTS as WORLD_DEFAULTS
from qtbench.world.generate import TASKS, build_world, resolve_config

__all__ = ["WORLD_DEFAULTS", "TASKS", "build_world", "resolve_config", "pretrain_base_model", "PRETRAIN_DEFAULTS"]


def __getattr__(name):
    if name in ("pretrain_base_model", "PRETRAIN_DEFAULTS"):
        from qtbench.world import pretrain

        return pretrain.pretrain_base_model if name == "pretrain_base_model" else pretrain.DEFAULTS
    raise AttributeError(name)
