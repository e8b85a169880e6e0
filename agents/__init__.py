"""Networks and policies shared by pretraining and fine-tuning, and the glue to Stable-Baselines3."""
