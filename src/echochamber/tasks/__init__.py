"""Problem sources: the synthetic generator, local files and hub datasets."""
