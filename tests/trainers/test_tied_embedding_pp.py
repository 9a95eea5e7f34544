"""Tied input/output embeddings under pipeline parallelism (torchrun, 2 processes, gloo, fp32).

With ``model.untie_embeddings=false`` and pp > 1, megatron-core keeps a copy of the word
embedding on the last stage as the output layer. Both optimizer backends must sum the two
stages' gradients into that weight (the pp=1 model's gradient), count it once in the clipping
norm, and so keep the two copies equal and take exactly the pp=1 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torchrun) -> dict:
    out = tmp_path_factory.mktemp("tied") / "runs.pt"
    torchrun(HERE / "tied_embedding_pp_worker.py", out, timeout=400)
    return torch.load(out)


def _close(a, b) -> None:
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-6)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "megatron"])
def test_pp2_with_tied_embeddings_takes_the_pp1_steps(runs, backend):
    ref, par = runs["pp1-torch"], runs[f"pp2-{backend}"]
    assert len(par["losses"]) == len(ref["losses"]) == 4
    assert min(ref["norms"]) > 0.5  # clipping is active: a wrong norm changes the steps
    _close(par["losses"], ref["losses"])
    _close(par["norms"], ref["norms"])
    _close(par["embedding"], ref["embedding"])
    # the last stage's copy of the embedding did not drift from the first stage's
    _close(par["output"], par["embedding"])


@pytest.mark.dist
@pytest.mark.slow
def test_both_backends_agree_at_pp1_with_tied_embeddings(runs):
    ref, meg = runs["pp1-torch"], runs["pp1-megatron"]
    _close(meg["norms"], ref["norms"])
    _close(meg["losses"], ref["losses"])
    _close(meg["embedding"], ref["embedding"])
    torch.testing.assert_close(ref["output"], ref["embedding"], rtol=0, atol=0)  # one tensor
