"""Trainers: continued pretraining and SFT on megatron-core, with the shared pieces
(schedules, optimizer, data, metrics logger, run folder) that GRPO and reward models reuse."""
