"""LLM continual pretraining: data, schedules, trainer, evaluation."""
