"""The Figure 7 recipe end to end on the tiny arithmetic policy: samples, grades, both curves,
the report files; one policy compared with itself gives identical curves."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_compare_writes_both_curves_and_a_policy_equals_itself(arithmetic_pretrained, tmp_path):
    from dsm_engine.grpo.data import PromptDataset
    from dsm_engine.recipes.arithmetic import grpo_config
    from dsm_engine.recipes.sharpening import SharpeningOptions, compare
    from dsm_engine.text_codec import TextCodec

    paths, _, init = arithmetic_pretrained  # shared by the session: read-only
    cfg = grpo_config(paths, init)
    codec = TextCodec(cfg.data.tokenizer)
    prompts = PromptDataset(cfg.data, codec, path=cfg.eval.path).prompts[:12]
    options = SharpeningOptions(samples=8, ks=(1, 2, 4, 8), draws=64)

    result = compare({"before": init, "after": init}, prompts, codec, tmp_path, options)

    before, after = result.curves["before"], result.curves["after"]
    assert before == after  # same weights, same sampling seed
    passes = [before["pass"][k] for k in options.ks]
    assert passes == sorted(passes) and 0.0 < passes[0] < 1.0  # the policy is partly right
    assert before["maj"][1] == pytest.approx(passes[0], abs=0.1)
    saved = json.loads((tmp_path / "sharpening.json").read_text())
    assert saved["questions"] == 12 and set(saved["curves"]) == {"before", "after"}
    report = (tmp_path / "sharpening.md").read_text()
    assert "| before | Maj@K |" in report and "Pass@8 changes by +0.000" in report
    assert (tmp_path / "sharpening.png").stat().st_size > 10_000
