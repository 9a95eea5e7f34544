"""`dsm data mine` on bad or unsuitable input: say what is wrong first, never end silently empty.

The unsuitable input is the quickstart's: the real WARC samples and generated pages, a seed of
120 pages. The paper's classifier settings (3 epochs at lr 0.1) learn nothing from so few pages
(every page scores P(math) 0.49999-0.50003), so the keep threshold (0.6) would keep nothing.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from dsm_engine.commands.data_mine import main
from dsm_engine.data_pipeline.classifier import (
    ClassifierConfig,
    keep_rule_problem,
    train_classifier,
)
from dsm_engine.data_pipeline.synthetic_pages import _prose, write_seed_jsonl
from dsm_engine.data_pipeline.synthetic_warc import write_synthetic_warc

SMALL_BUCKET = "classifier.bucket=20000"  # the paper's 2M hash rows make a 2 GB model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("mine_inputs")
    warcs = root / "warcs"
    warcs.mkdir()
    for real in sorted((shared_data / "warc").glob("*.warc.gz")):
        os.symlink(real, warcs / real.name)
    write_synthetic_warc(warcs / "synthetic.warc.gz", n_math=30, n_nonmath=150, seed=0)
    write_seed_jsonl(root / "seed.jsonl", n=120)
    return root


def _args(inputs, out, *extra):
    return [
        "--warc",
        str(inputs / "warcs" / "*.warc.gz"),
        "--seed",
        str(inputs / "seed.jsonl"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_non_warc_and_empty_files_are_named_before_any_stage_runs(inputs, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.warc.gz").write_text('{"text": "a JSON line, not a WARC"}\n')
    (tmp_path / "in" / "empty.warc.gz").write_bytes(b"")
    for real in sorted((inputs / "warcs").glob("*.warc.gz")):
        os.symlink(real, tmp_path / "in" / real.name)
    args = [
        "--warc",
        str(tmp_path / "in" / "*.warc.gz"),
        "--seed",
        str(inputs / "seed.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1  # one line, no log of stages that should not have run
    assert "2 of 5 matching files are not WARC/WET files" in err
    assert "empty.warc.gz: empty file" in err and "notes.warc.gz: not a WARC file" in err
    assert not (tmp_path / "out" / "pool").exists()


def test_bad_seed_line_is_named_before_any_stage_runs(inputs, tmp_path, capsys):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"text": "x^2 = 4"}\n\n{"txt": "typo in the key"}\n')
    args = _args(inputs, tmp_path / "out")
    args[args.index("--seed") + 1] = str(seed)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "seed.jsonl:3: record has no 'text' field" in err and "--skip-bad-lines" in err
    assert not (tmp_path / "out" / "pool").exists()


def test_warc_without_pages_fails_naming_the_funnel(inputs, tmp_path, capsys):
    packed = next((inputs / "warcs").glob("cc-main*")).read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "info.warc.gz").write_bytes(packed[:481])  # the warcinfo record only
    args = [
        "--warc",
        str(tmp_path / "in" / "*.warc.gz"),
        "--seed",
        str(inputs / "seed.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no page reached the pool" in err and "1 WARC records -> 0 pages" in err
    assert not list((tmp_path / "out").glob("iter_*"))


def test_undertrained_classifier_is_reported_with_the_settings_to_change(tmp_path):
    write_seed_jsonl(tmp_path / "seed.jsonl", n=120)
    seed = [json.loads(x)["text"] for x in (tmp_path / "seed.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    prose = [_prose(rng, topic, 12) for topic in ["cooking", "travel", "music", "pets"] * 30]
    paper = ClassifierConfig(bucket=20000)
    model = train_classifier(seed, prose, tmp_path / "paper.bin", paper)
    problem = keep_rule_problem(model, seed, paper, n_train=240)
    assert problem and "median 0.500" in problem and "classifier.epoch" in problem
    small = ClassifierConfig(bucket=20000, epoch=25)
    model = train_classifier(seed, prose, tmp_path / "small.bin", small)
    assert keep_rule_problem(model, seed, small, n_train=240) is None


def test_paper_settings_on_a_tiny_seed_stop_in_iteration_1_with_the_fix(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(inputs, out, SMALL_BUCKET)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dsm data mine: error: iteration 1: the math classifier learned too")
    assert "raise classifier.epoch" in err
    assert not (out / "iter_1" / "classifier.bin").exists()  # a rerun must not trust it
    assert not (out / "mined.jsonl").exists()


def test_empty_corpus_warns_loudly_exits_1_and_prints_the_funnel(inputs, tmp_path, capsys):
    seed = tmp_path / "seed.jsonl"
    seed.write_text((inputs / "seed.jsonl").read_text() + "{not json\n")
    args = _args(
        inputs,
        tmp_path / "out",
        "--iterations",
        "1",
        "--skip-bad-lines",
        "--threshold",
        "0",
        "--token-budget",
        "1",
        SMALL_BUCKET,
    )
    args[args.index("--seed") + 1] = str(seed)
    assert main(args) == 1  # a budget of one token fits no page
    out, err = capsys.readouterr()
    assert "WARNING: the mined corpus" in err and "is EMPTY" in err
    assert "classifier.token_budget 1" in err
    funnel = next(line for line in out.splitlines() if line.startswith("funnel: "))
    assert "WARC records ->" in funnel and funnel.endswith("0 kept after 1 iteration(s)")
    skipped = next(line for line in out.splitlines() if line.startswith("skipped: "))
    assert "1 bad seed lines" in skipped and "non-HTML" in skipped
