"""Environments by id, task sequences, experts, datasets and vectorized evaluation."""
