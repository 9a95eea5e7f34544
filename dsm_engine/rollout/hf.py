"""Rollouts with transformers ``generate`` (CPU or GPU): the embedded default backend.

The sampler's log-probs are taken inside ``generate`` by a logits processor that runs first
on the raw fp32 logits: it divides them by the temperature (so no temperature warper of
transformers runs) and keeps ``log_softmax`` of the current step; on the next call the
token just sampled is the last column of ``input_ids``, so only one step of ``(rows, V)``
log-probs is ever held (not ``steps x rows x V`` as ``output_logits`` would keep).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dsm_engine.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, check_prompts


class _LogprobRecorder:
    """Logits processor: temperature-scale the scores and record the sampled tokens' log-probs."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.prev: torch.Tensor | None = None  # (rows, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # per step: (rows,) log-prob of the sampled token

    def take(self, tokens: torch.Tensor) -> None:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, tokens[:, None].long()).squeeze(1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.take(input_ids[:, -1])
        scaled = scores.float() / self.temperature
        self.prev = torch.log_softmax(scaled, dim=-1)
        return scaled


class HFRolloutEngine(RolloutEngine):
    """A ``LlamaForCausalLM`` (built from ``hf_config``) sampling with ``generate``.

    Args:
        hf_config: a ``transformers`` config (e.g. ``dsm_engine.models.hf_config(model_cfg)``).
        device: where the sampler runs (default: CUDA if available, else CPU).
        dtype: parameter dtype of the sampler (default: the config's).
        pad_token_id: id used to left-pad prompts (never sampled into a response's tokens).
        max_batch_rows: rows per ``generate`` call (bounds activation memory).
    """

    def __init__(
        self,
        hf_config,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        pad_token_id: int = 0,
        max_batch_rows: int = 256,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_config(hf_config)
        if dtype is not None:
            self.model.to(dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.vocab_size = int(hf_config.vocab_size)
        self.pad_token_id = pad_token_id
        self.max_batch_rows = max_batch_rows

    @torch.no_grad()
    def update_weights(self, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy a full HF state dict into the sampler in place (strict: every tensor named)."""
        own = self.model.state_dict()
        missing = sorted(set(own) - set(hf_state_dict))
        unexpected = sorted(set(hf_state_dict) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"update_weights: state dict does not match the sampler "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        for name, t in hf_state_dict.items():
            if own[name].shape != t.shape:
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(t.shape)}, "
                    f"sampler expects {tuple(own[name].shape)}"
                )
            own[name].copy_(t)

    @torch.no_grad()
    def generate(
        self, prompts_token_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> RolloutBatch:
        check_prompts(prompts_token_ids, n, self.vocab_size)
        rows = [list(map(int, p)) for p in prompts_token_ids for _ in range(n)]
        devices = [self.device] if self.device.type == "cuda" else []
        out = RolloutBatch([], [], [], [j // n for j in range(len(rows))])
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            for s in range(0, len(rows), self.max_batch_rows):
                self._generate_rows(rows[s : s + self.max_batch_rows], params, out)
        return out

    def _generate_rows(self, rows: list[list[int]], params: SamplingParams, out: RolloutBatch):
        from transformers import LogitsProcessorList, TopPLogitsWarper

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token is at column -1
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
        recorder = _LogprobRecorder(params.temperature)
        processors = [recorder]
        if params.top_p < 1.0 and not params.greedy:
            processors.append(TopPLogitsWarper(params.top_p))
        stop = list(params.stop_token_ids)
        seqs = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            do_sample=not params.greedy,
            temperature=1.0,  # applied by the recorder, before top-p
            top_p=1.0,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,
            eos_token_id=stop or None,
            pad_token_id=self.pad_token_id,
            logits_processor=LogitsProcessorList(processors),
            use_cache=True,
        )
        recorder.take(seqs[:, -1])
        new = seqs[:, width:].cpu()
        logps = torch.stack(recorder.steps, dim=1).cpu() if recorder.steps else None
        stop_set = set(stop)
        for i in range(len(rows)):
            toks = new[i].tolist()
            end, finished = len(toks), False
            for t, tok in enumerate(toks):
                if tok in stop_set:
                    end, finished = t + 1, True
                    break
            out.token_ids.append(toks[:end])
            out.logprobs.append(logps[i, :end].tolist() if logps is not None else [])
            out.finished.append(finished)
