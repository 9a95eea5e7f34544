"""Rollouts with vLLM (GPU, optional): used only when ``vllm`` imports.

Written against vLLM 0.33.0's source (V1 engine; ``vllm/entrypoints/llm.py``,
``vllm/v1/sample/sampler.py``, ``vllm/v1/worker/worker_base.py``). What it relies on:

* **Log-probs of the distribution sampled from.** vLLM returns, by default
  (``logprobs_mode="raw_logprobs"``), ``log_softmax`` of the raw logits, *before* temperature.
  The engine is therefore built with ``logprobs_mode="processed_logprobs"``: ``log_softmax``
  after temperature (and after top-k/top-p masking), i.e. ``softmax(logits / T)`` when
  ``top_p=1``, the quantity the trainer recomputes. Two documented differences from the ``hf``
  backend: with ``top_p < 1`` the log-probs are renormalised over the nucleus (the distribution
  actually sampled from), and greedy requests (``temperature=0`` in vLLM) get ``log_softmax`` of
  the unscaled logits (the GRPO trainer's greedy evaluation does not use them).
* **In-memory weights.** The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``;
  with the default multiprocess engine the model lives in another process and
  ``llm.llm_engine.model_executor`` does not exist). ``LLM.apply_model(fn)`` then calls ``fn``
  on the worker's model without serialising anything, and ``fn`` calls the model's
  ``load_weights`` with HF-named tensors (vLLM fuses q/k/v and gate/up itself). The prefix
  cache holds KV computed with the old weights, so it is reset after every update.
* **Stopping.** ``ignore_eos=True``: the config's default ``eos_token_id`` (2 for a
  ``LlamaConfig``) would otherwise be added to the stop tokens through the generation config;
  only ``SamplingParams.stop_token_ids`` end a response, as in the ``hf`` backend.
* **Seeds.** Prompt ``i`` gets seed ``(seed mod 2^31) * 2^32 + i * n`` (vLLM keeps seeds in
  int64) and vLLM gives its ``n`` samples ``seed + j``: every row has its own random stream.
* **Tool-integrated rollouts** (``tools=``): the loop is ``rollout.tools.tool_rollout``, the
  one the ``hf`` backend runs; this engine is its ``ContinueRows``. Each round is one
  ``LLM.generate`` over the unfinished rows (one ``n=1`` request per row, continuing the
  prompt plus that row's exact token ids so far), with the loop's stop strings (the
  ```` ```output ```` fence) as ``stop`` and ``include_stop_str_in_output=True``; the sampled ids and log-probs are kept as returned, the
  interpreter's output is appended as tool-masked tokens with log-prob 0 by the shared loop.
  Row ``j`` in round ``r`` gets seed ``base + r * 2^24 + j`` (``base`` as above): its stream
  depends on (row, round) only, not on which other rows are still going, and round 0 draws
  what the plain path draws. vLLM matches stop strings on its own detokenised text, which
  needs a tokenizer (``SamplingParams`` refuses ``stop`` without ``detokenize``, and the plain
  path builds vLLM with ``skip_tokenizer_init``, without one): with tools the engine writes
  ``ToolOptions.tokenizer_json`` beside the config with a ``tokenizer_config.json`` naming
  ``PreTrainedTokenizerFast`` and builds the ``LLM`` with that tokenizer. vLLM's detokenizer
  does not cut the token ids at the stop string (several tokens per step, as with
  speculative decoding, can overrun it), so each piece is cut again with the loop's own
  ``decode`` (``rollout.tools.stop_end``).

What was checked, and how. Read in vLLM's source (stored copies of its repository, not all
pinned to 0.33.0): ``SamplingParams`` refuses ``stop`` without ``detokenize``;
``v1/engine/detokenizer.py`` matches stop strings on the new text after detokenising every
new token of a step and cuts the text, not the token ids; ``v1/engine/parallel_sampling.py``
gives child ``j`` of an ``n``-request the seed ``seed + j``. Run here: the conversion and the
multi-round loop in ``tests/grpo/test_vllm_rollout_adapter.py``, against a scripted stand-in
for ``vllm`` (two rounds, the real sandbox, the round limit). Not run (vLLM is not installed
here and there is no GPU): vLLM itself -- that it loads a tokenizer from a folder holding only
``tokenizer.json`` and that ``tokenizer_config.json``, that its detokenised text agrees with
``ToolOptions.decode`` on real tokenizers, the log-probs of continued prompts, and the speed
of one ``generate`` per round.

The engine must own its process's ``torch.distributed`` world: vLLM builds its groups over the
whole default group, which would hang a multi-rank trainer where only the sampler rank builds
the engine, so that case is refused with a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from dsm_engine.config import ConfigError
from dsm_engine.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, check_prompts
from dsm_engine.rollout.tools import Piece, ToolOptions, stop_end, tool_rollout

#: The vLLM release whose source this adapter was checked against.
CHECKED_VLLM_VERSION = "0.33.0"

#: Seeds of tool rounds: ``base + round * _ROUND_STRIDE + row`` (rows and rounds must fit).
_ROUND_STRIDE = 1 << 24
_MAX_ROUNDS = 1 << 8  # base < 2^63 - 2^32, so any row < 2^24 and round < 2^8 stays in int64


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "rollout.backend=vllm needs the optional 'vllm' package (pip install "
            "'dsm-engine[gpu]') and a CUDA GPU; use rollout.backend=hf otherwise"
        ) from e
    return vllm


def _check_single_process_world() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            "rollout.backend=vllm runs vLLM inside the trainer process, and vLLM builds its "
            f"process groups over the whole torch.distributed world ({dist.get_world_size()} "
            "ranks here), which only the sampler rank would join; use one process "
            "(world size 1) with vllm, or rollout.backend=hf"
        )


def _base_seed(seed: int) -> int:
    return (seed & 0x7FFFFFFF) << 32


def _write_tokenizer(folder: str, tokenizer_json: str) -> None:
    """A tokenizer folder transformers' ``AutoTokenizer`` (which vLLM calls) loads as it is:
    the generic fast class, so no model-specific post-processor (Llama's adds a bos it may
    not have) is built over it."""
    import json

    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(tokenizer_json)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, f)


def _dtype_name(hf_config) -> str:
    dtype = getattr(hf_config, "dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


class VLLMRolloutEngine(RolloutEngine):
    """A vLLM ``LLM`` built from ``hf_config`` (dummy weights until ``update_weights``).

    Args:
        hf_config: a ``transformers`` Llama config (its ``dtype`` is the sampler's dtype).
        gpu_memory_utilization: fraction of the GPU vLLM may take (weights + KV cache); the
            trainer's own tensors must leave that much free when the engine is built.
        max_model_len: prompt + response cap (default: the config's position limit).
        pad_token_id, max_batch_rows: accepted for interface parity with ``hf`` (vLLM
            schedules its own batches and never pads).
        tools: run tool-integrated rollouts (``dsm_engine.rollout.tools``); needs
            ``tools.tokenizer_json``. None: plain text, token ids only (no tokenizer).
    """

    def __init__(
        self,
        hf_config,
        *,
        pad_token_id: int = 0,
        max_batch_rows: int = 256,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        tools: ToolOptions | None = None,
        **_: object,
    ) -> None:
        if tools is not None and tools.tokenizer_json is None:
            raise ConfigError(
                "rollout.tools=python with rollout.backend=vllm needs the policy's tokenizer "
                "(ToolOptions.tokenizer_json): vLLM matches the code-block stop strings itself"
            )
        if tools is not None and tools.loop.max_rounds + 1 > _MAX_ROUNDS:
            raise ConfigError(
                f"rollout.tool_max_rounds must be < {_MAX_ROUNDS} with rollout.backend=vllm, "
                f"got {tools.loop.max_rounds}"
            )
        vllm = _import_vllm()
        _check_single_process_world()
        import tempfile

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._dir = tempfile.mkdtemp(prefix="dsm-vllm-")
        hf_config.save_pretrained(self._dir)  # the architecture only: no weights on disk
        if tools is not None:
            _write_tokenizer(self._dir, tools.tokenizer_json)
        self.tools = tools
        self.llm = vllm.LLM(
            model=self._dir,
            tokenizer=self._dir if tools is not None else None,
            skip_tokenizer_init=tools is None,
            load_format="dummy",
            dtype=_dtype_name(hf_config),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=True,
            logprobs_mode="processed_logprobs",
        )
        if not hasattr(self.llm.llm_engine, "model_executor"):
            raise RuntimeError(
                "rollout.backend=vllm needs vLLM's engine in this process "
                "(VLLM_ENABLE_V1_MULTIPROCESSING=0) to load weights in memory; it is set to "
                f"{os.environ.get('VLLM_ENABLE_V1_MULTIPROCESSING')!r}"
            )
        self.vocab_size = int(hf_config.vocab_size)

    def update_weights(self, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a full HF Llama state dict into the sampler in place (no disk round trip)."""
        items = list(hf_state_dict.items())

        def load(model: torch.nn.Module) -> None:
            model.load_weights(weights=iter(items))

        self.llm.apply_model(load)
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")

    def generate(
        self, prompts_token_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> RolloutBatch:
        vllm = _import_vllm()
        check_prompts(prompts_token_ids, n, self.vocab_size)
        if self.tools is not None:
            if len(prompts_token_ids) * n > _ROUND_STRIDE:
                raise ValueError(
                    f"rollout.backend=vllm with tools samples at most {_ROUND_STRIDE} rows "
                    f"per call, got {len(prompts_token_ids) * n}"
                )
            return tool_rollout(self._continue, prompts_token_ids, n, params, self.tools)
        per_prompt = [
            vllm.SamplingParams(
                n=n,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                max_tokens=params.max_new_tokens,
                stop_token_ids=list(params.stop_token_ids),
                ignore_eos=True,
                seed=_base_seed(params.seed) + i * n,
                logprobs=0,
                detokenize=False,
            )
            for i in range(len(prompts_token_ids))
        ]
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompts_token_ids]
        results = self.llm.generate(prompts, per_prompt, use_tqdm=False)
        out = RolloutBatch([], [], [], [])
        for i, res in enumerate(results):
            for comp in res.outputs:
                toks = list(comp.token_ids)
                out.token_ids.append(toks)
                out.logprobs.append([float(lp[t].logprob) for t, lp in zip(toks, comp.logprobs)])
                out.finished.append(comp.finish_reason == "stop")
                out.prompt_index.append(i)
        return out

    def _continue(
        self,
        contexts: list[list[int]],
        budgets: list[int],
        stop: Sequence[str],
        params: SamplingParams,
        *,
        rows: Sequence[int],
        round_index: int,
    ) -> list[Piece]:
        """One tool round: a ``ContinueRows`` over one ``LLM.generate`` call."""
        vllm = _import_vllm()
        assert self.tools is not None
        seed = _base_seed(params.seed) + round_index * _ROUND_STRIDE
        requests = [
            vllm.SamplingParams(
                n=1,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                max_tokens=budget,
                stop_token_ids=list(params.stop_token_ids),
                stop=list(stop),
                include_stop_str_in_output=True,
                ignore_eos=True,
                seed=seed + row,
                logprobs=0,
                detokenize=bool(stop),  # vLLM matches stop strings on its detokenised text
            )
            for budget, row in zip(budgets, rows)
        ]
        prompts = [{"prompt_token_ids": ctx} for ctx in contexts]
        results = self.llm.generate(prompts, requests, use_tqdm=False)
        stop_ids = set(params.stop_token_ids)
        pieces = []
        for res in results:
            (comp,) = res.outputs
            toks = list(comp.token_ids)
            lps = [float(lp[t].logprob) for t, lp in zip(toks, comp.logprobs)]
            end = stop_end(toks, stop, self.tools.decode)
            hit = end > 0 and toks[end - 1] in stop_ids
            pieces.append(Piece(toks[:end], lps[:end], hit))
        return pieces
