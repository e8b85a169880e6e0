"""Training components every learner shares: the optimizer, learning-rate schedules, precision/autocast,
``torch.compile``, throughput/MFU accounting and data parallelism (DDP/FSDP2). The CPT trainer, the offline
learner and the pretrained-module trainers build their loops from these instead of each their own."""
