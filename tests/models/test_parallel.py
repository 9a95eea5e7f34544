"""TP=2 and PP=2 on CPU (gloo, torchrun with 2 processes) match TP=1/PP=1 and Hugging Face."""

from __future__ import annotations

import json

import pytest
from _models_helpers import HERE


@pytest.fixture(scope="module")
def dist_results(hf_tiny_dirs, tmp_path_factory, torchrun) -> dict:
    work = tmp_path_factory.mktemp("dist")
    out = work / "results.json"
    hf = [f"{k}={v}" for k, v in hf_tiny_dirs.items()]
    torchrun(
        HERE / "dist_worker.py", "--hf", *hf, "--ckpt", work / "ckpt", "--out", out, timeout=600
    )
    return json.loads(out.read_text())


LAYOUTS = ["tp2", "pp2"]
MODELS = ["tiny", "tiny-gqa"]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model", MODELS)
def test_parallel_layout_equals_tp1(dist_results, layout, model):
    key = f"{layout}/{model}"
    assert dist_results[f"{key}/logits_maxdiff_vs_tp1"] <= 1e-5
    assert dist_results[f"{key}/loss_rel_vs_tp1"] <= 1e-5
    assert dist_results[f"{key}/gradnorm_rel_vs_tp1"] <= 1e-5
    assert dist_results[f"{key}/grads_maxdiff_vs_tp1"] <= 1e-5


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp1", *LAYOUTS])
@pytest.mark.parametrize("model", MODELS)
def test_hf_import_matches_transformers_logits(dist_results, layout, model):
    assert dist_results[f"{layout}/{model}/hf_logits_maxdiff"] <= 1e-4


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp1", *LAYOUTS])
@pytest.mark.parametrize("model", MODELS)
def test_export_gives_bit_identical_hf_tensors(dist_results, layout, model):
    assert dist_results[f"{layout}/{model}/export_bit_identical"] is True


@pytest.mark.dist
@pytest.mark.slow
def test_checkpoint_saved_at_tp2_loads_at_pp2(dist_results):
    assert dist_results["pp2/tiny/ckpt_extra_step"] == 3
    assert dist_results["pp2/tiny/ckpt_tp2_to_pp2_hf_maxdiff"] <= 1e-4
