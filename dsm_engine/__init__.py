"""dsm-engine: a kernel-optimised training engine for mathematical-reasoning language models.

Packages, lowest layer first; each imports only from layers below it (``tests/test_layers.py``):

- foundations: ``config`` (typed dataclass configs from YAML with ``key=value`` overrides),
  ``jsonl``, ``procs`` (child-process command lines), ``folder_lock``; then ``text_codec``
  (tokenizer.json and the special-token spellings) and ``plotting``;
- leaf libraries: ``kernels`` (Triton + PyTorch references), ``models`` (megatron-core models,
  parallel setup, checkpoints, conversion), ``rewards`` (the answer grader), ``sandbox``
  (model-written Python), ``tasks``; then ``rollout`` (sampling engines, tool-integrated rounds);
- the loops: ``reward_models``, then ``trainers`` (one ``TrainingSession`` owning parallel
  setup, run folder, resume, logging, profiling and checkpoints; pretraining, SFT and RM
  training as step functions on it), then ``grpo`` (GRPO and the other post-training
  algorithms of the paper's unified paradigm, on the same session);
- applications: ``eval`` and ``data_pipeline`` (Common Crawl mining as datatrove steps);
- the top: ``commands`` (``dsm`` subcommands), ``recipes`` (whole experiments), ``quickstart``
  and ``cli``.
"""

__version__ = "0.1.0"
