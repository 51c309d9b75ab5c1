"""Fine-tuning with a pruning method in the loop: the loop, one step, collectives, checkpoints."""
