"""echochamber: controlled studies of how RL post-training amplifies formats learned in pretraining."""

__version__ = "0.1.0"
