"""`python -m echochamber ...` (and `torchrun ... -m echochamber pretrain ...`) run the CLI."""

from .cli import main

main()
