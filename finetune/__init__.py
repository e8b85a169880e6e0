"""Adaptation and continual-learning methods, and the runners that apply them to tasks and sequences."""
