"""Pretraining objectives and their trainers (inverse dynamics, multi-task DT, LM continual pretraining)."""
