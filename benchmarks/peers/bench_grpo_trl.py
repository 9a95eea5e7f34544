"""A GRPO step on the CPU against TRL's ``GRPOTrainer``: seconds per step split into
generation, log-prob passes and update, and peak RSS.

Both start from the same weights: the arithmetic demo's ``TINY_MODEL`` pretrained for
``--pretrain-steps`` on its corpus (``recipes.arithmetic.pretrain``, as the quickstart does),
which ours loads as its checkpoint and TRL as the Hugging Face folder that ``dsm convert
dsm-to-hf`` writes from it. They train on the same arithmetic prompts
(``recipes.arithmetic.prepare``: tokenizer and ``train.jsonl``), with the same group size,
prompts per step, response length,
sampling (temperature 1, top-p 1), loss (``loss_type="grpo"``: the paper's sequence mean of
token means, beta 0.04 on the plain k3 KL (TRL: ``use_bias_correction_kl=False``), clip 0.2,
one update per batch, lr 5e-4 constant, grad clip 1.0), activations recomputed layer by layer
in backward (TRL's default ``gradient_checkpointing=True``; ours ``train.recompute=full``) and
the same verifier reward (``dsm_engine.rewards.verifier.verify``).

* ours: ``dsm_engine.grpo.trainer.run_grpo`` on ``recipes.arithmetic.grpo_config`` (rollout
  backend ``hf``); its per-step metrics give the split (rollout, reference + old log-probs,
  update; weight sync and reward counted in the step total).
* TRL: ``GRPOTrainer`` (generation by ``transformers``' ``generate``, ``use_cpu=True``); the
  split is timed around its ``_generate``, its log-prob passes without gradient, and
  ``training_step`` (the update is the rest of ``training_step``).

Each runs in its own process; peak RSS is over the RSS after imports. The first step of each
is a warm-up and is not counted; the table gives medians over the other steps.

Most of either step's RSS growth is glibc keeping freed activations in its heap, not live
tensors: ``--malloc-mmap-threshold BYTES`` runs both children with that fixed
``MALLOC_MMAP_THRESHOLD_`` (which also stops glibc raising the threshold as blocks are freed),
so every larger block is returned to the OS on free; steps get slower, and the peaks come
closer to what each step really holds.

    python -P benchmarks/peers/bench_grpo_trl.py [--steps 4 --prompts 8 --group 8 \\
        --new-tokens 32 --rounds 1 --pretrain-steps 300] [--malloc-mmap-threshold 131072]

Writes ``benchmarks/results/grpo_trl.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import RESULTS, peak_rss_bytes, reset_peak_rss, run_child, run_info, write_results  # noqa: E402

PACKAGES = ("dsm-engine", "torch", "transformers", "trl", "accelerate")
SEED = 0
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def run_ours(spec: dict) -> dict:
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.recipes import arithmetic as demo

    paths = demo.DemoPaths(Path(spec["root"]))
    cfg = demo.grpo_config(
        paths,
        init=Path(spec["init"]),
        run_dir=str(Path(spec["root"]) / "ours"),
        checkpoint={"every": 1000},
        logging={"tensorboard": False, "progress": False},
        eval={"every": 0},  # TRL evaluates nothing either
        # TRL's GRPOConfig checkpoints activations by default: both recompute each layer
        train={"seed": SEED, "recompute": "full"},
        grpo={
            "steps": spec["steps"],
            "prompts_per_step": spec["prompts"],
            "group_size": spec["group"],
            "micro_batch_size": spec["prompts"] * spec["group"],
            # one update per batch: TRL (num_iterations=1) runs no old-policy pass either
            "old_logp": "rollout",
        },
        rollout={"backend": "hf", "temperature": 1.0, "max_new_tokens": spec["new_tokens"]},
    )
    base = reset_peak_rss()
    history = run_grpo(cfg)
    steps = [
        {
            "generation": h["time_rollout_s"],
            "logprobs": h["time_reference_s"] + h["time_old_s"],
            "update": h["time_update_s"],
            "total": h["step_time_s"],
            "loss": h["loss"],
            "response_tokens": h["response_len_mean"],
        }
        for h in history
    ]
    return _result(steps, base)


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.rewards.verifier import verify
    from dsm_engine.tasks.arithmetic import PROMPT_TEMPLATE

    paths = DemoPaths(Path(spec["root"]))
    base = reset_peak_rss()  # as for ours: model, optimizer and sampler are counted
    torch.manual_seed(SEED)
    model = LlamaForCausalLM.from_pretrained(spec["hf_init"], dtype=torch.float32)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(paths.tokenizer))
    eos = tok.convert_ids_to_tokens(spec["eos"])
    tok.eos_token = tok.pad_token = eos
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = spec["eos"]
    # TRL builds its reference model from the policy's path (beta > 0): give it a folder
    folder = Path(spec["root"]) / "trl-init"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [json.loads(line) for line in paths.train.read_text().splitlines() if line.strip()]
    data = Dataset.from_list(
        [
            {"prompt": PROMPT_TEMPLATE.format(question=r["question"]), "gold": str(r["answer"])}
            for r in rows
        ]
    )

    def reward(completions, gold, **_):
        return [verify(c, g, kind="auto") for c, g in zip(completions, gold)]

    times: dict[str, list[float]] = {"generation": [], "logprobs": [], "step": []}

    class Timed(GRPOTrainer):
        def _generate(self, *args, **kwargs):
            tic = time.perf_counter()
            out = super()._generate(*args, **kwargs)
            times["generation"].append(time.perf_counter() - tic)
            return out

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            tic = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            if not torch.is_grad_enabled():  # old / reference passes, not the update's
                times["logprobs"].append(time.perf_counter() - tic)
            return out

        def training_step(self, *args, **kwargs):
            tic = time.perf_counter()
            out = super().training_step(*args, **kwargs)
            times["step"].append(time.perf_counter() - tic)
            return out

    n = spec["prompts"] * spec["group"]
    args = GRPOConfig(
        output_dir=str(Path(spec["root"]) / "trl"),
        use_cpu=True,
        seed=SEED,
        max_steps=spec["steps"],
        per_device_train_batch_size=n,
        num_generations=spec["group"],
        max_completion_length=spec["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        beta=0.04,
        epsilon=0.2,
        loss_type="grpo",
        use_bias_correction_kl=False,  # TRL's default weights the KL by pi/pi_old; the paper not
        num_iterations=1,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        bf16=False,
        disable_tqdm=True,
        gradient_checkpointing=True,  # its default, stated: ours runs train.recompute=full
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = Timed(
        model=str(folder), reward_funcs=reward, args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    return _result(times_to_steps(times, trainer), base)


def times_to_steps(times: dict[str, list[float]], trainer) -> list[dict]:
    """TRL's per-step split from the timed calls (its losses from the trainer's log)."""
    logged = [h for h in trainer.state.log_history if "loss" in h]
    logp_per_step = len(times["logprobs"]) // max(1, len(times["step"]))
    steps = []
    for i, total in enumerate(times["step"]):
        log = logged[i] if i < len(logged) else {}
        lp = sum(times["logprobs"][i * logp_per_step : (i + 1) * logp_per_step])
        gen = times["generation"][i]
        steps.append(
            {
                "generation": gen,
                "logprobs": lp,
                "update": total - gen - lp,
                "total": total,
                "loss": log.get("loss", float("nan")),
                "response_tokens": log.get("completions/mean_length", float("nan")),
            }
        )
    return steps


def _result(steps: list[dict], base: int) -> dict:
    return {
        "steps": steps,
        "peak_bytes": peak_rss_bytes() - base,
        "peak_abs": peak_rss_bytes(),
        "malloc": _malloc_setting(),
    }


def _malloc_setting() -> str:
    """The glibc allocator setting this process started under, as the table shows it."""
    threshold = os.environ.get(MMAP_THRESHOLD_ENV)
    return f"mmap threshold {threshold}" if threshold else "default"


def _summary(name: str, runs: list[dict]) -> dict:
    """One row from each run of ``name``: medians over every run's steps but its first."""
    errors = [got["error"] for got in runs if "error" in got]
    if errors:
        return {"trainer": name, "error": errors[0]}
    timed = [s for got in runs for s in (got["steps"][1:] or got["steps"])]  # step 1 warms up
    row = {"trainer": name}
    for key in ("generation", "logprobs", "update", "total"):
        row[f"{key} s/step"] = round(statistics.median(s[key] for s in timed), 3)
    row["response tokens/row"] = round(statistics.mean(s["response_tokens"] for s in timed), 1)
    row["peak RSS MiB"] = round(max(got["peak_abs"] for got in runs) / 2**20, 1)
    row["peak RSS over imports MiB"] = round(max(got["peak_bytes"] for got in runs) / 2**20, 1)
    row["malloc"] = " / ".join(sorted({got["malloc"] for got in runs}))
    row["losses"] = " ".join(f"{s['loss']:.4f}" for s in runs[0]["steps"])
    return row


def run(args: argparse.Namespace) -> Path:
    from dsm_engine.models.convert import dsm_to_hf_main
    from dsm_engine.recipes import arithmetic as demo

    env = run_info(PACKAGES)
    with tempfile.TemporaryDirectory() as tmp:
        paths, eos = demo.prepare(tmp, num_docs=2000, seed=SEED)
        init = demo.pretrain(
            paths, eos, steps=args.pretrain_steps, progress=False, train={"seed": SEED}
        )
        hf_init = Path(tmp) / "init-hf"
        dsm_to_hf_main(["--ckpt", str(init), "--out", str(hf_init)])
        spec = {"root": tmp, "eos": eos, "steps": args.steps, "prompts": args.prompts}
        spec.update(group=args.group, new_tokens=args.new_tokens)
        spec.update(init=str(init), hf_init=str(hf_init))
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        child_env = {}
        if args.malloc_mmap_threshold is not None:
            child_env[MMAP_THRESHOLD_ENV] = str(args.malloc_mmap_threshold)
        for _ in range(args.rounds):  # alternated: a change of load hits both alike
            for name, got in runs.items():
                child_args = [f"--{name}", json.dumps(spec)]
                got.append(run_child(Path(__file__), child_args, args.timeout, env=child_env))
                print(name, json.dumps(got[-1])[:300], flush=True)
        rows = [_summary(name, got) for name, got in runs.items()]
    env["load_avg_after"] = run_info()["load_avg_1m_5m_15m"]
    notes = [
        f"{args.prompts} prompts x {args.group} samples, up to {args.new_tokens} new tokens, "
        f"{args.steps} steps (the first a warm-up) in each of {args.rounds} runs per trainer, "
        f"alternated; policy: arithmetic demo TINY_MODEL pretrained {args.pretrain_steps} steps, "
        "the same weights for both; wall seconds per step on a shared 2-core machine (load "
        "above), medians over all runs' steps; response tokens/row: mean over those steps.",
        "ours: logprobs = reference (+ old-policy, none here) passes; total also holds reward scoring and "
        "the weight sync to the sampler. TRL: update = training_step - generation - logprobs "
        "(its reward scoring is inside).",
        "Both recompute activations layer by layer in backward (TRL's default "
        "gradient_checkpointing=True; ours train.recompute=full); neither evaluates.",
        "One update per batch, so neither runs an old-policy pass: TRL (num_iterations=1) "
        "takes the policy's own detached log-probs as pi_old, ours grpo.old_logp=rollout the "
        "sampler's (same weights); logprobs is then the reference pass alone on both sides.",
        "Losses are per step (first run); both start from the same weights but sample "
        "differently, so they are not expected to be equal.",
    ]
    if args.malloc_mmap_threshold is not None:
        notes.append(
            f"Both children ran with {MMAP_THRESHOLD_ENV}={args.malloc_mmap_threshold}: glibc "
            "returns every block above it to the OS on free, so peak RSS is closer to the "
            "live memory and steps are slower than under the default allocator."
        )
    return write_results("grpo_trl", rows, env, notes, out_dir=Path(args.out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1, help="runs per trainer, alternated")
    p.add_argument(
        "--pretrain-steps", type=int, default=300, help="steps of the shared initial policy"
    )
    p.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="run both trainers with this fixed glibc mmap threshold (default: glibc's own)",
    )
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--ours", help=argparse.SUPPRESS)
    p.add_argument("--trl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ours or args.trl:
        fn, spec = (run_ours, args.ours) if args.ours else (run_trl, args.trl)
        print(json.dumps(fn(json.loads(spec))))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
