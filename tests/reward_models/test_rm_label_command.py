"""``dsm rm label`` sets up distributed state for itself and leaves none behind."""

from __future__ import annotations

import json


def test_label_opens_and_closes_its_own_parallel_session(tmp_path):
    from dsm_engine.models import build_model, model_config, parallel_session, save_checkpoint
    from dsm_engine.models.parallel import current_context
    from dsm_engine.recipes.arithmetic import TINY_MODEL, label_prm, prepare

    paths, _ = prepare(tmp_path / "demo", num_docs=300)
    with parallel_session(seed=0) as ctx:  # an untrained policy: labels are what they are
        save_checkpoint(tmp_path / "policy", 0, build_model(model_config(TINY_MODEL), ctx))
    assert current_context() is None

    out = label_prm(paths, tmp_path / "policy", tmp_path / "labels.jsonl", num_prompts=3, samples=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(rows) <= 3 * 2  # empty responses are dropped
    assert all(len(r["step_labels"]) == len(r["step_ends"]) for r in rows)
    assert current_context() is None  # the command tore down what it set up
