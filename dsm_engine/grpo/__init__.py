"""GRPO (DeepSeekMath §4.1, Algorithm 1) on megatron-core models: prompts, rollout and reward,
the clipped KL-penalised update on the fused kernels, and iterative RL with a refreshed reward
model. ``dsm train grpo`` runs :func:`dsm_engine.grpo.trainer.run_grpo`."""
