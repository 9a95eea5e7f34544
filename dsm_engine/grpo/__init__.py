"""GRPO (DeepSeekMath §4.1, Algorithm 1) on megatron-core models: prompts, rollout and reward,
the clipped KL-penalised update on the fused kernels, and iterative RL with a refreshed reward
model. ``dsm train grpo`` runs :func:`dsm_engine.grpo.trainer.run_grpo`.

The paper's other post-training methods (§5.2: SFT, RFT, Online RFT, DPO, PPO) and variants
(RLOO, Dr. GRPO) are gradient coefficients feeding the same update: ``algorithms`` (the
registry and ``plan_update``), ``gae`` and ``critic`` (PPO), ``dpo``."""
