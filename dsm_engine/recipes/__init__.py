"""Recipes: whole experiments assembled from the engine's commands and loops.

``arithmetic``: the tiny arithmetic policy (pretraining, GRPO with outcome or process rewards,
reward-model labelling) that the examples and the learning tests run on a CPU. Recipes sit in
the top layer beside the commands; nothing in the engine imports them.
"""
