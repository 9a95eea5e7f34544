"""Reward models (ORM / PRM) on the policy architecture, their losses, labels, replay buffer,
metrics, and the GRPO advantages of each reward kind. Submodules import megatron-core only
where a model is built (``model``, ``scorer.load_reward_fn``)."""
