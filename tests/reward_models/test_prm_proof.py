"""The proof of process supervision (CPU, issue #6), on the tiny arithmetic task of
``dsm_engine.recipes.arithmetic`` with the session's pretrained policy:

* a PRM trained on Monte-Carlo step labels (``dsm rm label --kind prm``) of the policy's
  samples separates good from bad steps of *held-out* problems: AUC >= 0.75;
* GRPO with ``reward.supervision: prm`` (per-token process advantages from that PRM's step
  scores; the verifier only measures) climbs the PRM's score and raises held-out greedy
  accuracy by at least 10 points, as the outcome-supervised run does (by 20). The PRM cannot
  check arithmetic, so the run is anchored (β = 1.0: a weakly anchored one collapses held-out
  accuracy to 0.0-0.29) and its learning rate decays (at a constant rate the greedy policy
  swings by up to 20 points between evaluations); measured over PRM seeds in
  ``recipes.arithmetic.prm_grpo_config``. The reward is the mean of three PRMs trained on the
  same labels (training seeds 1-3): one PRM's proxies decide where a run ends (one pretrained
  policy gained 23 points with one seed-1 PRM, another only 5), the ensemble's gain held on both
  (+27 and +23).
"""

from __future__ import annotations

import json
import time

import pytest


@pytest.fixture(scope="module")
def arithmetic_prm(arithmetic_pretrained, tmp_path_factory):
    """``(checkpoint roots, final metrics, CPU seconds)`` of the three PRMs trained on the
    policy's step labels."""
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import label_and_train_prm

    paths, _, policy = arithmetic_pretrained
    cpu0 = time.process_time()
    ckpts, final = label_and_train_prm(
        paths, policy, tmp_path_factory.mktemp("prm"), ensemble=3, seed=1, progress=False
    )
    destroy_parallel()
    return ckpts, final, time.process_time() - cpu0


@pytest.mark.slow
def test_prm_beats_chance_on_heldout_step_labels(arithmetic_prm):
    _, final, cpu = arithmetic_prm
    print(
        f"PRM held-out step AUC {final['eval_auc']:.3f}, accuracy {final['eval_acc']:.3f} on "
        f"{final['heldout_step_labels']:.0f} step labels ({final['heldout_good_step_share']:.2f} "
        f"good); labelling + training CPU {cpu:.0f}s"
    )
    # Both classes are well represented, so the AUC is not an artefact of a degenerate split.
    assert 0.2 <= final["heldout_good_step_share"] <= 0.8
    assert final["heldout_step_labels"] >= 400
    assert final["eval_auc"] >= 0.75 and final["member_auc_min"] >= 0.75
    assert cpu < 900  # CPU time swells when the cores are shared


@pytest.mark.slow
def test_process_supervised_grpo_raises_heldout_accuracy_by_10_points(
    arithmetic_pretrained, arithmetic_prm, tmp_path
):
    """The PRM alone drives the advantages; the KL anchor (β = 1.0) holds what it cannot see
    (the arithmetic, the operands) while the policy learns which operation each problem
    needs: the PRM's score on the policy's own samples rises, and so does held-out accuracy."""
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import prm_grpo_config

    paths, _, init = arithmetic_pretrained
    prms, _, _ = arithmetic_prm
    run_dir = tmp_path / "grpo-prm"
    cpu0 = time.process_time()
    cfg = prm_grpo_config(
        paths, init, prms, run_dir=str(run_dir), logging={"progress": False, "tensorboard": False}
    )
    assert cfg.reward.supervision == "prm" and cfg.schedule.name == "cosine"
    run_grpo(cfg)
    destroy_parallel()
    grpo_cpu = time.process_time() - cpu0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
    before, after = evals[0], max(evals[-2:])
    steps = [r for r in rows if "rm_step_score" in r]
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    first, last = steps[:10], steps[-10:]
    print(
        f"process-supervised GRPO: held-out accuracy {before:.3f} -> {after:.3f} (curve "
        f"{evals}); mean PRM step score {mean('rm_step_score', first):.3f} -> "
        f"{mean('rm_step_score', last):.3f}; GRPO CPU {grpo_cpu:.0f}s"
    )
    assert len(steps) == cfg.grpo.steps  # every step's advantages came from the PRM
    assert mean("rm_step_score", last) - mean("rm_step_score", first) >= 0.1
    assert after - before >= 0.10
    assert grpo_cpu < 600  # ~215 s on 2 idle cores
