"""RL post-training: rollouts, losses, and one file per algorithm."""
