"""Inputs shared by the mining tests: real WARC samples + generated math pages + a seed."""

from __future__ import annotations

import os
from pathlib import Path

from dsm_engine.data_pipeline.mine import MineConfig
from dsm_engine.data_pipeline.synthetic_pages import write_seed_jsonl
from dsm_engine.data_pipeline.synthetic_warc import write_robustness_warc, write_synthetic_warc

# paper defaults learn nothing from 120 seed pages in 3 epochs: more epochs, fewer hash rows,
# and a model that has seen little is less sure of itself (math pages score 0.55-0.95 here)
SMALL_RUN = {"bucket": 20000, "epoch": 25, "threshold": 0.55}


def make_inputs(root: Path, shared_data: Path) -> dict:
    warcs = root / "warcs"
    warcs.mkdir(parents=True)
    for real in sorted((shared_data / "warc").glob("*.warc.gz")):
        os.symlink(real, warcs / real.name)
    pages = write_synthetic_warc(warcs / "synthetic.warc.gz", n_math=30, n_nonmath=150, seed=0)
    robust = write_robustness_warc(warcs / "robust.warc.gz", huge_mb=50)
    write_seed_jsonl(root / "seed.jsonl", n=120)
    return {
        "glob": str(warcs / "*.warc.gz"),
        "seed": str(root / "seed.jsonl"),
        "pages": pages,
        "robust": robust,
    }


def mine_config(inputs: dict, out: Path, **overrides) -> MineConfig:
    cfg = MineConfig(
        warc=inputs["glob"], seed=inputs["seed"], out=str(out), iterations=4, auto_annotate=0.5
    )
    for key, value in SMALL_RUN.items():
        setattr(cfg.classifier, key, value)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
