"""Model files: the model-dir format, base checkpoints (backbones), integrity checks, the card and the
training report."""
