"""Pieces of `model.training.train`: weight init, losses, lr schedule, distributed setup, run state, logs."""
