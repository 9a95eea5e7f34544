"""Batched text generation for evaluation: transformers ``generate`` (default) or vLLM.

Both backends take plain prompts and return, per prompt, ``num_samples`` completions cut at
the first stop string. Greedy when ``temperature == 0``, else sampling (seeded).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dsm_engine.procs import python_argv

__all__ = [
    "GenerationConfig",
    "Generator",
    "HFGenerator",
    "VLLMGenerator",
    "load_generator",
    "resolve_model_dir",
    "truncate_at_stop",
]


@dataclass
class GenerationConfig:
    """Decoding settings.

    temperature: 0 means greedy; > 0 samples with ``top_p``.
    num_samples: completions per prompt (1 for greedy).
    stop: strings that end a completion (the text from the first one on is dropped).
    keep_stop: keep the stop string that ended a completion (tool-integrated generation
        needs to see which one did).
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()
    keep_stop: bool = False


class Generator(Protocol):
    """A generation backend."""

    def generate(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """``num_samples`` completions per prompt; ``on_batch(n)`` after n prompts are done."""
        ...


def truncate_at_stop(text: str, stop: Sequence[str], keep: bool = False) -> str:
    """``text`` up to the earliest stop string (excluded, or included when ``keep``)."""
    cut, end = len(text), len(text)
    for s in stop:
        i = text.find(s)
        if 0 <= i < cut or (i == cut and i + len(s) > end):
            cut, end = i, i + len(s)
    return text[: end if keep else cut]


def resolve_model_dir(model: str | Path, work_dir: str | Path) -> Path:
    """A Hugging Face folder for ``model``: itself, or a dsm checkpoint exported under
    ``work_dir/hf_export`` with ``dsm convert dsm-to-hf`` (run once, reused on resume)."""
    model = Path(model)
    if (model / "config.json").is_file():
        return model
    if not model.exists():
        raise FileNotFoundError(f"--model {model}: no such folder")
    export = Path(work_dir) / "hf_export"
    if (export / "config.json").is_file():
        return export
    try:
        from dsm_engine.models.checkpoint import resolve_checkpoint
    except ImportError as e:  # pragma: no cover - the models package is part of the distribution
        raise FileNotFoundError(
            f"--model {model}: not a Hugging Face folder (no config.json)"
        ) from e
    try:
        resolve_checkpoint(model)
    except Exception as e:
        raise FileNotFoundError(
            f"--model {model}: neither a Hugging Face folder (config.json) nor a dsm checkpoint ({e})"
        ) from e
    # a separate process: the converter initialises torch.distributed, which must not leak here
    command = python_argv(
        "-m",
        "dsm_engine.cli",
        "convert",
        "dsm-to-hf",
        "--ckpt",
        str(model),
        "--out",
        str(export),
    )
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (export / "config.json").is_file():
        raise RuntimeError(
            f"exporting dsm checkpoint {model} to HF failed:\n{result.stderr[-2000:]}"
        )
    return export


class HFGenerator:
    """transformers ``AutoModelForCausalLM.generate`` over left-padded batches."""

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        tokenizer: str | Path | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = (
            getattr(torch, dtype)
            if dtype
            else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.tokenizer.pad_token is None:
            raise ValueError(f"tokenizer in {model_dir} has no pad, eos or unk token to pad with")
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
            .to(self.device)
            .eval()
        )
        self.batch_size = batch_size

    def generate(self, prompts, config, on_batch=None):
        import torch

        # length-sorted batches waste less padding; results go back in the caller's order
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[str]] = [[] for _ in prompts]
        sampling = config.temperature > 0
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(
                self.device
            )
            kwargs = dict(
                max_new_tokens=config.max_new_tokens,
                do_sample=sampling,
                num_return_sequences=config.num_samples,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if sampling:
                # top_k=0: else generate cuts to its default top-k 50 (vLLM samples without one)
                kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
                torch.manual_seed(config.seed + b)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if config.stop:
                kwargs.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
            with torch.no_grad():
                out = self.model.generate(**enc, **kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, i in enumerate(idx):
                chunk = texts[j * config.num_samples : (j + 1) * config.num_samples]
                results[i] = [truncate_at_stop(t, config.stop, config.keep_stop) for t in chunk]
            if on_batch is not None:
                on_batch(len(idx))
        return results


class VLLMGenerator:
    """vLLM offline engine (GPU); only when ``vllm`` is importable."""

    def __init__(
        self, model_dir: str | Path, dtype: str | None = None, tokenizer: str | Path | None = None
    ):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError(
                "--backend vllm needs the 'vllm' package (pip install vllm, GPU only); use --backend hf"
            ) from e
        self.llm = LLM(
            model=str(model_dir),
            tokenizer=str(tokenizer or model_dir),
            dtype=dtype or "auto",
            seed=0,
        )

    def generate(self, prompts, config, on_batch=None):
        from vllm import SamplingParams

        params = SamplingParams(
            n=config.num_samples,
            temperature=config.temperature,
            top_p=config.top_p if config.temperature > 0 else 1.0,
            max_tokens=config.max_new_tokens,
            stop=list(config.stop) or None,
            include_stop_str_in_output=config.keep_stop,
            seed=config.seed,
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        if on_batch is not None:
            on_batch(len(prompts))
        stop, keep = config.stop, config.keep_stop
        return [[truncate_at_stop(c.text, stop, keep) for c in o.outputs] for o in outputs]


def load_generator(
    backend: str,
    model_dir: str | Path,
    batch_size: int = 8,
    dtype: str | None = None,
    tokenizer: str | Path | None = None,
) -> Generator:
    """``hf`` or ``vllm`` generator for the Hugging Face folder ``model_dir`` (its tokenizer,
    or the Hugging Face tokenizer folder ``tokenizer``)."""
    if backend == "hf":
        return HFGenerator(model_dir, batch_size=batch_size, dtype=dtype, tokenizer=tokenizer)
    if backend == "vllm":
        return VLLMGenerator(model_dir, dtype=dtype, tokenizer=tokenizer)
    raise ValueError(f"--backend {backend!r}: expected 'hf' or 'vllm'")
