"""Trainers: continued pretraining and SFT on megatron-core, the reward-model trainer, and the
shared pieces GRPO reuses: the training session (``session``: parallel setup, run folder,
resume, checkpoints, logging, profiling, the step loop), schedules, optimizer, data, metrics."""
