"""``dsm rm label``: label policy samples for reward-model training.

    dsm rm label --kind prm --policy runs/pretrain/checkpoints --prompts train.jsonl \
        --tokenizer tok.json --out labels.jsonl --samples 4 --completions 8 --delimiter "."

ORM rows carry the verifier's verdict; PRM rows add Monte-Carlo step labels (a step is good
when one of ``--completions`` rollouts from it reaches the gold answer). Rollouts use the
``hf`` backend (or ``vllm`` when installed). The logic lives in
``dsm_engine.reward_models.labeling``.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dsm rm label", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("orm", "prm"), required=True)
    ap.add_argument("--policy", required=True, help="dsm checkpoint root/step or HF folder")
    ap.add_argument("--prompts", required=True, help="JSON Lines with question/answer fields")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json (or its folder)")
    ap.add_argument("--out", required=True, help="output JSON Lines")
    ap.add_argument("--template", default="{question}", help="prompt template with {question}")
    ap.add_argument("--question-field", default="question")
    ap.add_argument("--answer-field", default="answer")
    ap.add_argument("--answer-kind", default="auto", help="verifier answer kind")
    ap.add_argument("--num-prompts", type=int, default=0, help="first N prompts (0: all)")
    ap.add_argument("--samples", type=int, default=4, help="responses per prompt")
    ap.add_argument("--completions", type=int, default=8, help="K rollouts per step (prm)")
    ap.add_argument("--delimiter", default="\n", help="step delimiter (prm); \\n by default")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str]) -> int:
    """Entry point of ``dsm rm label``; returns 0, or 2 on bad input (printed)."""
    args = _parser().parse_args(argv)
    from dsm_engine.config import ConfigError

    try:
        n = label(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"dsm rm label: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} {args.kind.upper()} rows to {args.out}")
    return 0


def label(args: argparse.Namespace) -> int:
    """Run the labelling described by ``args``; returns the number of rows written."""
    from dsm_engine.grpo.config import PromptDataConfig
    from dsm_engine.grpo.data import PromptDataset
    from dsm_engine.models.convert import export_hf_state_dict, hf_config
    from dsm_engine.models.parallel import parallel_session
    from dsm_engine.models.pretrained import from_pretrained
    from dsm_engine.reward_models.data import write_examples
    from dsm_engine.reward_models.labeling import (
        LabelPrompt,
        monte_carlo_step_labels,
        sample_and_grade,
        verifier_grader,
    )
    from dsm_engine.rewards.checker import SymbolicChecker
    from dsm_engine.rollout.base import SamplingParams
    from dsm_engine.rollout.factory import build_rollout_engine
    from dsm_engine.text_codec import TextCodec

    delimiter = args.delimiter.encode().decode("unicode_escape")
    codec = TextCodec(args.tokenizer)
    data = PromptDataset(
        PromptDataConfig(
            path=args.prompts,
            tokenizer=args.tokenizer,
            question_field=args.question_field,
            answer_field=args.answer_field,
            template=args.template,
        ),
        codec,
    )
    prompts = data.prompts[: args.num_prompts or None]
    # Model-parallel state only while the policy is read; sampling runs on the rollout engine.
    with parallel_session() as ctx:
        policy = from_pretrained(args.policy, ctx=ctx)
        engine = build_rollout_engine(
            args.backend, hf_config(policy.model_cfg), pad_token_id=codec.pad_id
        )
        engine.update_weights(export_hf_state_dict(policy))
        del policy
    params = SamplingParams(
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=[codec.eos_id],
        seed=args.seed,
    )
    todo = [LabelPrompt(p.token_ids, p.text, p.gold) for p in prompts]
    with SymbolicChecker() as checker:  # one warm checker for every grading call
        grade = verifier_grader(args.answer_kind, checker)
        rows = sample_and_grade(engine, todo, args.samples, params, codec.decode, grade)
        if args.kind == "prm":
            params.seed = args.seed + 1
            rows = monte_carlo_step_labels(
                engine, rows, args.completions, params, codec.decode, grade, delimiter
            )
    write_examples(rows, args.out)
    return len(rows)
