"""Data-pruning methods: the interface (base), the registry, the stats pass, Q-Tuning, static scoring."""
