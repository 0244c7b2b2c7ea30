"""Training: pretraining loss weighting and (later) the training loop."""
