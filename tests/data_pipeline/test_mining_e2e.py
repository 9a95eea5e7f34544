"""End to end: real Common Crawl samples + generated math pages -> mined corpus."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _mining_data import SMALL_RUN, make_inputs, mine_config

from dsm_engine.commands.data_mine import main
from dsm_engine.data_pipeline.mine import funnel_summary, mine_corpus
from dsm_engine.data_pipeline.urls import normalize_url


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data):
    return make_inputs(tmp_path_factory.mktemp("mining_inputs"), shared_data)


@pytest.fixture(scope="module")
def mined(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("mined") / "run"
    result = mine_corpus(mine_config(inputs, out), progress=False)
    docs = [json.loads(line) for line in result.mined.read_text().splitlines()]
    return result, docs


def kept_urls(docs):
    return {normalize_url(d["metadata"]["url"]) for d in docs}


def test_math_pages_are_recalled_and_non_math_pages_rejected(inputs, mined):
    _, docs = mined
    urls = kept_urls(docs)
    math = [
        p
        for p in inputs["pages"]
        if p.kind == "math" and not p.duplicate_of and not p.near_duplicate_of
    ]
    copies = {p.near_duplicate_of: p.url for p in inputs["pages"] if p.near_duplicate_of}
    recalled = [
        p
        for p in math
        if normalize_url(p.url) in urls or normalize_url(copies.get(p.url, "")) in urls
    ]
    assert len(recalled) >= 0.9 * len(math), sorted(
        set(p.url for p in math) - set(p.url for p in recalled)
    )
    nonmath = {normalize_url(p.url) for p in inputs["pages"] if p.kind == "nonmath"}
    assert not urls & nonmath
    real = [
        d
        for d in docs
        if not d["metadata"]["domain"].endswith("example.org")
        and not d["metadata"]["domain"].endswith((".example.com", ".example.edu", ".example.net"))
    ]
    assert real == []  # none of the real (non-math) Common Crawl pages is kept


def test_latex_survives_extraction_in_every_markup_style(inputs, mined):
    _, docs = mined
    by_url = {normalize_url(d["metadata"]["url"]): d["text"] for d in docs}
    seen_styles = set()
    for page in inputs["pages"]:
        text = by_url.get(normalize_url(page.url))
        if page.kind != "math" or text is None:
            continue
        squeezed = text.replace(" ", "")
        for latex in page.latex:
            assert latex.replace(" ", "") in squeezed, (page.style, latex, text[:300])
        assert r"\frac{" in text or r"\sqrt{" in text or "^{" in text
        seen_styles.add(page.style)
    assert seen_styles == {"mathjax", "katex", "mathml", "dollars", "alt"}


def test_funnel_counts_every_stage_and_every_skip(inputs, mined):
    result, docs = mined
    f = result.funnel
    assert f["pages_in"] >= f["html_pages"] >= f["extracted"] >= f["language_kept"]
    assert (
        f["language_kept"]
        >= f["url_dedup_kept"]
        >= f["near_dedup_kept"]
        >= f["kept"]
        == len(docs)
        > 0
    )
    n_url_dups = sum(p.duplicate_of is not None for p in inputs["pages"])
    n_near_dups = sum(p.near_duplicate_of is not None for p in inputs["pages"])
    assert f["language_kept"] - f["url_dedup_kept"] == n_url_dups
    assert f["url_dedup_kept"] - f["near_dedup_kept"] >= n_near_dups
    assert f["skipped"]["skipped_non_html"] >= 1  # the PNG
    for key in ("empty_page", "bad_encoding", "warc_corrupt_record", "warc_truncated_record"):
        assert f["skipped"][key] == 1, key
    assert f["truncated_pages"] == 1 and f["skipped"]["language_dropped"] >= 3  # ru, de, nl
    assert json.loads((result.out / "funnel.json").read_text()) == f


def test_each_url_and_each_near_duplicate_group_appears_once(mined):
    _, docs = mined
    urls = [normalize_url(d["metadata"]["url"]) for d in docs]
    assert len(urls) == len(set(urls))
    bases = [u.removesuffix("-copy") for u in urls]
    assert len(bases) == len(set(bases))


def test_iterations_keep_their_artifacts_and_stop_early(mined):
    result, _ = mined
    f = result.funnel
    assert f["stopped_early"] and f["iterations_run"] < 4
    last = f["iterations"][-1]
    assert last["overlap_with_previous"] >= 0.98
    assert not (result.out / f"iter_{f['iterations_run'] + 1}").exists()
    for k in range(1, f["iterations_run"] + 1):
        it = result.out / f"iter_{k}"
        for name in (
            "classifier.bin",
            "domain_report.json",
            "domain_report.md",
            "path_candidates.tsv",
            "annotations_template.txt",
            "collected_ids.txt",
            "seed_added.jsonl",
            "stats.json",
        ):
            assert (it / name).is_file(), (k, name)
        assert list((it / "scores").glob("*.jsonl.gz"))
    report = json.loads((result.out / "iter_1" / "domain_report.json").read_text())
    domains = {d["domain"] for d in report["math_domains"]}
    assert {
        "mathhelp-forum.example.org",
        "algebra-tutor.example.com",
        "calc-notes.example.edu",
        "learn-hub.example.net",
    } <= domains
    assert all(d["fraction"] > 0.10 for d in report["math_domains"])
    candidates = (result.out / "iter_1" / "path_candidates.tsv").read_text()
    assert "learn-hub.example.net/math/\t" in candidates
    assert "learn-hub.example.net/cooking/" not in candidates.split("\n")[1].split("\t")[0]


def test_seed_additions_come_from_annotated_paths_only(mined):
    result, _ = mined
    it = result.out / "iter_1"
    prefixes = it.joinpath("annotations_used.txt").read_text().split()
    added = [json.loads(line) for line in it.joinpath("seed_added.jsonl").read_text().splitlines()]
    collected = set(it.joinpath("collected_ids.txt").read_text().split("\n"))
    scores = {
        r["id"]: r
        for p in (it / "scores").glob("*.jsonl.gz")
        for r in map(json.loads, __import__("gzip").open(p, "rt"))
    }
    for row in added:
        assert row["id"] not in collected
        url = scores[row["id"]]["url"]
        assert any(normalize_url(url).startswith("http://" + p) for p in prefixes), url


def test_missing_inputs_are_named_in_the_error(inputs, tmp_path, capsys):
    assert (
        main(
            [
                "--warc",
                str(tmp_path / "nothing" / "*.warc.gz"),
                "--seed",
                inputs["seed"],
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "nothing/*.warc.gz" in capsys.readouterr().err
    assert (
        main(
            [
                "--warc",
                inputs["glob"],
                "--seed",
                str(tmp_path / "no_seed.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no_seed.jsonl" in capsys.readouterr().err
    assert main(["--warc", inputs["glob"], "--seed", inputs["seed"]]) == 2
    assert "--out" in capsys.readouterr().err
    assert (
        main(
            [
                "--warc",
                inputs["glob"],
                "--seed",
                inputs["seed"],
                "--out",
                str(tmp_path / "o"),
                "classifier.dimm=3",
            ]
        )
        == 2
    )
    assert "classifier.dimm" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(inputs, mined, tmp_path):
    result, _ = mined
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "dsm_engine.cli",
        "data",
        "mine",
        "--warc",
        inputs["glob"],
        "--seed",
        inputs["seed"],
        "--out",
        str(out),
        "--iterations",
        "4",
        "--auto-annotate",
        "0.5",
        "--no-progress",
    ]
    cmd += [f"classifier.{k}={v}" for k, v in SMALL_RUN.items()]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = out / "pool" / "logs" / "url_filter" / "completions" / "00000"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-stage: later tasks of url_filter have not run
    proc.wait()
    assert marker.exists() and not (out / "mined.jsonl").exists()
    resumed = mine_corpus(mine_config(inputs, out), progress=False)
    assert resumed.mined.read_text() == result.mined.read_text()
    assert resumed.funnel == result.funnel


def test_funnel_summary_names_truncated_records_by_reason(inputs, mined):
    result, _ = mined
    assert result.funnel["record_defects"] == {"warc_truncated_headers_cut": 1}  # cut in half
    text = funnel_summary(result.funnel, mine_config(inputs, result.out))
    funnel, skipped = text.splitlines()
    assert funnel.startswith(f"funnel: {result.funnel['warc_records']} WARC records -> ")
    runs = result.funnel["iterations_run"]
    assert funnel.endswith(f"-> {result.funnel['kept']} kept after {runs} iteration(s)")
    assert "1 truncated WARC records (headers_cut 1)" in skipped
    assert "1 corrupt WARC records" in skipped and "1 undecodable" in skipped
