"""Pieces of `model.train`: weight init, losses, lr schedule, distributed setup, run state, logs."""
