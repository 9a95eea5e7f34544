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
from dsm_engine.rollout.tools import Piece, ToolOptions, tool_rollout


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
        tools: run tool-integrated rollouts (``dsm_engine.rollout.tools``); None: plain text.
    """

    def __init__(
        self,
        hf_config,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        pad_token_id: int = 0,
        max_batch_rows: int = 256,
        tools: ToolOptions | None = None,
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
        self.tools = tools

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
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            if self.tools is not None:
                return tool_rollout(self._continue, prompts_token_ids, n, params, self.tools)
            rows = [list(map(int, p)) for p in prompts_token_ids for _ in range(n)]
            pieces = self._continue(rows, [params.max_new_tokens] * len(rows), (), params)
        return RolloutBatch(
            [p.token_ids for p in pieces],
            [p.logprobs for p in pieces],
            [p.hit_stop_token for p in pieces],
            [j // n for j in range(len(rows))],
        )

    def _continue(
        self,
        contexts: list[list[int]],
        budgets: list[int],
        stop: Sequence[str],
        params: SamplingParams,
        *,
        rows: Sequence[int] = (),
        round_index: int = 0,
    ) -> list[Piece]:
        """Continue each context by at most ``budgets[k]`` tokens (a ``ContinueRows``).
        ``rows`` and ``round_index`` are unused: every call draws from the one torch stream
        that ``generate`` seeded."""
        pieces: list[Piece] = []
        for s in range(0, len(contexts), self.max_batch_rows):
            sl = slice(s, s + self.max_batch_rows)
            pieces += self._generate_rows(contexts[sl], budgets[sl], stop, params)
        return pieces

    def _generate_rows(
        self, rows: list[list[int]], budgets: list[int], stop: Sequence[str], params: SamplingParams
    ) -> list[Piece]:
        from transformers import LogitsProcessorList, StoppingCriteriaList, TopPLogitsWarper

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
        criteria = []
        if stop:
            assert self.tools is not None, "stop strings need the tools' decode"
            criteria.append(_StopOnText(stop, width, self.tools.decode))
        stop_ids = list(params.stop_token_ids)
        seqs = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            do_sample=not params.greedy,
            temperature=1.0,  # applied by the recorder, before top-p
            top_p=1.0,
            top_k=0,  # generate's own default is top-k 50, which SamplingParams never asks for
            max_new_tokens=max(budgets),
            min_new_tokens=0,
            eos_token_id=stop_ids or None,
            pad_token_id=self.pad_token_id,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList(criteria),
            use_cache=True,
        )
        recorder.take(seqs[:, -1])
        new = seqs[:, width:].cpu()
        logps = torch.stack(recorder.steps, dim=1).cpu() if recorder.steps else None
        stop_set = set(stop_ids)
        pieces = []
        for i in range(len(rows)):
            toks = new[i, : budgets[i]].tolist()
            end = next((t + 1 for t, tok in enumerate(toks) if tok in stop_set), len(toks))
            if stop:
                end = _text_stop_end(toks[:end], stop, self.tools.decode)
            hit = end > 0 and toks[end - 1] in stop_set
            pieces.append(
                Piece(toks[:end], logps[i, :end].tolist() if logps is not None else [], hit)
            )
        return pieces


class _StopOnText:
    """Stopping criterion: a row is done once its new text contains one of ``stop``."""

    def __init__(self, stop: Sequence[str], width: int, decode) -> None:
        self.stop, self.width, self.decode = tuple(stop), width, decode
        # a stop string spans at most len(s) tokens; a few more cover partial characters
        self.tail = max(len(s) for s in self.stop) + 4

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width :][:, -self.tail :].tolist()
        done = [any(s in self.decode(row) for s in self.stop) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _text_stop_end(toks: list[int], stop: Sequence[str], decode) -> int:
    """Tokens to keep of ``toks``: through the first one whose text completes a stop string."""
    for t in range(len(toks)):
        text = decode(toks[: t + 1])
        if any(s in text for s in stop):
            return t + 1
    return len(toks)
