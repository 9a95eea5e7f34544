"""Triton kernels for GRPO training, each beside its plain-PyTorch reference.

Public ops (each takes ``impl="auto"|"triton"|"torch"``): ``logprobs_from_logits``,
``fused_linear_logprobs``, ``fused_linear_grpo_loss``, ``kl_k3``, ``grpo_loss``,
``group_advantages``, ``process_advantages``; ``<op>_ref`` is the plain-PyTorch reference.
The loss ops take their options as one object each: ``GRPOLossOptions`` (the GRPO loss) and
``HeadOptions`` (the fused lm_head), or those objects' fields as keywords.

Importing this package never imports megatron-core, transformers or datatrove.
"""

if __name__ == "dsm_engine.kernels":
    from dsm_engine.kernels._head_chunks import default_chunk_sizes
    from dsm_engine.kernels.advantages import (
        group_advantages,
        group_advantages_ref,
        process_advantages,
        process_advantages_ref,
    )
    from dsm_engine.kernels.fused_linear import fused_linear_logprobs, fused_linear_logprobs_ref
    from dsm_engine.kernels.fused_linear_grpo import (
        fused_linear_grpo_loss,
        fused_linear_grpo_loss_ref,
    )
    from dsm_engine.kernels.grpo_loss import grpo_loss, grpo_loss_ref
    from dsm_engine.kernels.kl import kl_k3, kl_k3_ref
    from dsm_engine.kernels.logprobs import logprobs_from_logits, logprobs_from_logits_ref
    from dsm_engine.kernels.options import (
        GRAD_WEIGHT_ACCUM,
        LOSS_AGGS,
        GRPOLossOptions,
        HeadOptions,
    )

    __all__ = [
        "GRAD_WEIGHT_ACCUM",
        "LOSS_AGGS",
        "GRPOLossOptions",
        "HeadOptions",
        "default_chunk_sizes",
        "fused_linear_grpo_loss",
        "fused_linear_grpo_loss_ref",
        "fused_linear_logprobs",
        "fused_linear_logprobs_ref",
        "group_advantages",
        "group_advantages_ref",
        "grpo_loss",
        "grpo_loss_ref",
        "kl_k3",
        "kl_k3_ref",
        "logprobs_from_logits",
        "logprobs_from_logits_ref",
        "process_advantages",
        "process_advantages_ref",
    ]
else:
    # This folder is the source of ``dsm_engine.kernels``. It is also reachable as a top-level
    # ``kernels`` whenever the checkout root is on sys.path (``python -m ...`` or ``python -c``
    # run there), and that name belongs to Hugging Face's ``kernels`` package, which
    # transformers imports. Running our modules a second time under another name would also
    # re-define every ``dsm_engine::*`` torch.library op while dsm_engine.kernels still calls
    # the first definitions. The engine never starts Python that way (children run with
    # ``python -P``, torchrun with ``--no-python dsm``); for anyone who does, this module
    # imports nothing of ours and hands the name to the package that owns it.
    import importlib.machinery as _machinery
    import os as _os
    import sys as _sys

    def _hand_over(name: str) -> None:
        checkout = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
        others = [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != checkout]
        spec = _machinery.PathFinder.find_spec(name, others) if "." not in name else None
        if spec is None or spec.loader is None:
            raise ImportError(
                f"{__file__} is the source folder of dsm_engine.kernels, not a module named "
                f"{name!r}: import dsm_engine.kernels (the checkout root {checkout} is on "
                "sys.path; start Python with -P to keep it off)",
                name=name,
            )
        import importlib.util as _util

        module = _util.module_from_spec(spec)
        # The import system returns whatever sys.modules holds once this file has run.
        _sys.modules[name] = module
        spec.loader.exec_module(module)

    _hand_over(__name__)
