"""Use case: fine-tune a checkpoint (the Trainer, resumable checkpoints), adapt a trained model to new
rules."""
