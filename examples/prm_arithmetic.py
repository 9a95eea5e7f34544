"""Process reward model on the tiny arithmetic task, end to end on CPU (a few minutes).

1. the GRPO demo's data and pretrained tiny policy (``dsm_engine.grpo.arithmetic_demo``);
2. ``dsm rm label --kind prm``: Monte-Carlo step labels on policy samples of the train split
   (and, for evaluation, of the held-out split), steps split at "." (the task's solutions are
   one line: " 3 + 4 = 7. The answer is \\boxed{7}.");
3. ``dsm train rm --kind prm`` from the pretrained policy; prints held-out step accuracy / AUC.

    python examples/prm_arithmetic.py --root runs/prm-demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(
    root: Path,
    *,
    pretrain_steps: int,
    label_prompts: int,
    rm_steps: int,
    temperature: float = 0.7,
) -> dict[str, float]:
    from dsm_engine.grpo import arithmetic_demo as demo
    from dsm_engine.rewards.labeling import main as label_main
    from dsm_engine.tasks.arithmetic import PROMPT_TEMPLATE
    from dsm_engine.trainers.reward_model import main as rm_main

    paths, eos = demo.prepare(root)
    ckpt = paths.pretrain_run / "checkpoints"
    if not (ckpt / "latest").is_file():
        ckpt = demo.pretrain(paths, eos, steps=pretrain_steps, progress=False)
    common = [
        "--kind",
        "prm",
        "--policy",
        str(ckpt),
        "--tokenizer",
        str(paths.tokenizer),
        "--template",
        PROMPT_TEMPLATE,
        "--samples",
        "4",
        "--completions",
        "4",
        "--delimiter",
        ".",
        "--max-new-tokens",
        "32",
        "--answer-kind",
        "auto",
        "--temperature",
        str(temperature),
    ]
    train_labels, held_labels = root / "prm_train.jsonl", root / "prm_heldout.jsonl"
    assert (
        label_main(
            [
                *common,
                "--prompts",
                str(paths.train),
                "--out",
                str(train_labels),
                "--num-prompts",
                str(label_prompts),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert (
        label_main(
            [
                *common,
                "--prompts",
                str(paths.heldout),
                "--out",
                str(held_labels),
                "--num-prompts",
                str(max(label_prompts // 3, 50)),
                "--seed",
                "2",
            ]
        )
        == 0
    )
    model = ",".join(f"{k}: {v}" for k, v in demo.TINY_MODEL.items())
    run_dir = root / "prm"
    rc = rm_main(
        [
            "--kind",
            "prm",
            "--config",
            "configs/rm/tiny-arithmetic-prm.yaml",
            f"run_dir={run_dir}",
            "overwrite=true",
            f"model={{{model}}}",
            f"data.train_path={train_labels}",
            f"data.eval_path={held_labels}",
            f"checkpoint.load={ckpt}",
            f"train.steps={rm_steps}",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    labels = [y for x in held_labels.read_text().splitlines() for y in json.loads(x)["step_labels"]]
    final["heldout_good_step_share"] = sum(labels) / len(labels)
    return final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/prm-demo")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--label-prompts", type=int, default=300)
    ap.add_argument("--rm-steps", type=int, default=150)
    ap.add_argument("--temperature", type=float, default=0.7)
    a = ap.parse_args()
    final = run(
        Path(a.root),
        pretrain_steps=a.pretrain_steps,
        label_prompts=a.label_prompts,
        rm_steps=a.rm_steps,
        temperature=a.temperature,
    )
    print(json.dumps({k: final[k] for k in final if k.startswith("eval_") or "share" in k}))


if __name__ == "__main__":
    main()
