"""Rollouts with vLLM (GPU, optional): used only when ``vllm`` imports.

Weights are loaded in memory from a HF state dict through vLLM's ``load_weights`` on the
driver worker's model; log-probs are requested per sampled token (``logprobs=0`` returns the
sampled token's log-prob, computed by vLLM from the temperature-scaled logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dsm_engine.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, check_prompts


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "rollout.backend=vllm needs the optional 'vllm' package (pip install "
            "'dsm-engine[gpu]') and a CUDA GPU; use rollout.backend=hf otherwise"
        ) from e
    return vllm


class VLLMRolloutEngine(RolloutEngine):
    """A vLLM ``LLM`` built from ``hf_config`` (dummy weights until ``update_weights``)."""

    def __init__(
        self,
        hf_config,
        *,
        pad_token_id: int = 0,
        max_batch_rows: int = 256,
        gpu_memory_utilization: float = 0.3,
        **_: object,
    ) -> None:
        vllm = _import_vllm()
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="dsm-vllm-")
        hf_config.save_pretrained(self._dir)  # the architecture only: no weights on disk
        self.llm = vllm.LLM(
            model=self._dir,
            skip_tokenizer_init=True,
            load_format="dummy",
            dtype=str(getattr(hf_config, "dtype", None) or "float32").replace("torch.", ""),
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=True,
        )
        self.vocab_size = int(hf_config.vocab_size)

    def update_weights(self, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
        items = list(hf_state_dict.items())
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(items)

    def generate(
        self, prompts_token_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> RolloutBatch:
        vllm = _import_vllm()
        check_prompts(prompts_token_ids, n, self.vocab_size)
        sp = vllm.SamplingParams(
            n=n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            seed=params.seed,
            logprobs=0,
        )
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompts_token_ids]
        results = self.llm.generate(prompts, sp, use_tqdm=False)
        out = RolloutBatch([], [], [], [])
        for i, res in enumerate(results):
            for comp in res.outputs:
                toks = list(comp.token_ids)
                out.token_ids.append(toks)
                out.logprobs.append([float(lp[t].logprob) for t, lp in zip(toks, comp.logprobs)])
                out.finished.append(comp.finish_reason == "stop")
                out.prompt_index.append(i)
        return out
