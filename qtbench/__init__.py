"""qtbench: a reproducible benchmark harness for data-efficient SFT (Q-Tuning and its baselines)."""

__version__ = "0.1.0"
