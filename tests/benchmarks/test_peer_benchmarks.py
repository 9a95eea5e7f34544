"""The peer-comparison benchmarks run end to end at tiny size (no timing is asserted): every
variant of one comparison computes the same thing, and the scripts write their JSON and
Markdown tables."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"peers_{name}_under_test", PEERS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _rows(out: Path, name: str) -> list[dict]:
    assert (out / f"{name}.md").read_text().startswith(f"# {name}")
    payload = json.loads((out / f"{name}.json").read_text())
    assert payload["environment"]["commit"] and payload["environment"]["load_avg_1m_5m_15m"]
    return payload["rows"]


@pytest.mark.slow
def test_head_variants_each_in_its_process_compute_one_loss(tmp_path):
    pytest.importorskip("liger_kernel.chunked_loss")
    variants = ["materialised", "torch-chunked", "liger", "ours-logprobs gw=auto"]
    variants += ["ours-grpo gw=fp32", "ours-grpo gw=param"]
    args = ["--shape", "256,16,300,bf16", "--repeats", "1", "--out", str(tmp_path)]
    assert _load("bench_head").main([*args, "--variants", *variants]) == 0
    rows = _rows(tmp_path, "head_cpu")
    assert [r["variant"] for r in rows] == variants
    assert all("error" not in r for r in rows), rows
    losses = [r["loss"] for r in rows]
    assert all(math.isclose(x, losses[0], rel_tol=2e-2, abs_tol=2e-3) for x in losses), losses
    assert all(r["peak extra MiB"] >= 0 and r["cpu s"] > 0 for r in rows)


def test_head_problem_has_ragged_masks_and_rejects_partial_sequences():
    mod = _load("bench_head")
    p = mod.Problem(512, 8, 100, torch.float32, "cpu")
    assert p.hidden.shape == (2, 256, 8) and p.mask.shape == (2, 256)
    assert p.mask[:, 0].all() and p.mask.sum() < p.mask.numel()
    with pytest.raises(ValueError, match="multiple"):
        mod.Problem(300, 8, 100, torch.float32, "cpu")


def test_head_fp32_lists_auto_and_main_grad_and_bf16_all_modes():
    names = _load("bench_head").variant_names
    assert [n for n in names("fp32") if n.startswith("ours")] == [
        "ours-logprobs gw=auto",
        "ours-logprobs gw=main_grad",
        "ours-grpo gw=auto",
        "ours-grpo gw=main_grad",
    ]
    assert sum(n.startswith("ours") for n in names("bf16")) == 8
    assert "ours-grpo gw=main_grad" in names("bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_head_gpu_half_exits_cleanly_without_cuda(tmp_path, capsys):
    assert _load("bench_head").main(["--device", "cuda", "--out", str(tmp_path)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_math_pages_label_every_style_and_score_by_substring(shared_data):
    mp = _load("math_pages")
    pages = mp.build_pages(shared_data / "benchmarks" / "math" / "test.jsonl", per_style=2)
    assert sorted({p.style for p in pages}) == sorted(mp.STYLES)
    assert all(mp.scored(p.formulas) for p in pages)
    assert mp.scored(["x", "x^2", r"\frac{a}{b}"]) == ["x^2", r"\frac{a}{b}"]
    assert mp.survived([r"\frac{a}{b}", "x^2"], r"so $\frac{a}{ b}$ holds") == 1


@pytest.mark.slow
def test_extract_bench_ours_keeps_all_math_the_peers_do_not(tmp_path):
    pytest.importorskip("trafilatura")
    _load("bench_extract").run(per_style=2, repeats=1, out_dir=tmp_path)
    rows = {r["extractor"]: r for r in _rows(tmp_path, "extract_peers")}
    assert set(rows) == {"ours", "resiliparse", "trafilatura", "trafilatura fast"}
    assert rows["ours"]["math kept %"] == 100.0
    assert rows["resiliparse"]["MathML-only styles %"] == 0.0
    assert all(r["WARC pages/s/core"] > 0 for r in rows.values())


@pytest.mark.slow
def test_decont_bench_compares_removed_documents_with_datatrove(tmp_path):
    pytest.importorskip("spacy")
    # a sample of the benchmark texts: datatrove's index build tokenises each one twice
    _load("bench_decont").run(num_docs=40, repeats=1, out_dir=tmp_path, num_texts=1500)
    rows = _rows(tmp_path, "decont_peers")
    assert [r["decontaminator"].split()[0] for r in rows] == ["ours", "datatrove", "datatrove"]
    caught, planted = map(int, rows[0]["planted docs caught"].split("/"))
    assert planted > 0 and caught == planted
    assert "1,500 benchmark texts" in (tmp_path / "decont_peers.md").read_text()


@pytest.mark.slow
def test_grpo_bench_splits_a_step_for_ours_and_trl(tmp_path):
    pytest.importorskip("trl")
    args = ["--steps", "2", "--prompts", "2", "--group", "2", "--new-tokens", "4"]
    args += ["--pretrain-steps", "2", "--malloc-mmap-threshold", "131072"]
    assert _load("bench_grpo_trl").main([*args, "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path, "grpo_trl")
    assert [r["trainer"] for r in rows] == ["ours", "trl"]
    for r in rows:
        assert "error" not in r, r
        assert r["malloc"] == "mmap threshold 131072"  # each child ran under the setting
        parts = r["generation s/step"] + r["logprobs s/step"]
        assert 0 < parts <= r["total s/step"] and r["peak RSS MiB"] > 0
        assert 0 < r["response tokens/row"] <= 4
        assert len(r["losses"].split()) == 2
