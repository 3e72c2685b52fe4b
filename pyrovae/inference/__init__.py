"""Inference for a trained model: per-point fits of q and the gaps between families."""
