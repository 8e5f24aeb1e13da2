"""Foundations: one-line errors, atomic file writes, the validated training configuration."""
