"""URLs, WARC robustness, language id, classifier and domain discovery, one by one."""

import json
from pathlib import Path

import pytest

from dsm_engine.data_pipeline.classifier import (
    ClassifierConfig,
    math_score,
    select_top,
    train_classifier,
)
from dsm_engine.data_pipeline.domains import (
    PageRow,
    domain_report,
    propose_paths,
    read_annotations,
    seed_additions,
)
from dsm_engine.data_pipeline.executors import stat
from dsm_engine.data_pipeline.extract import MathHtmlExtractor
from dsm_engine.data_pipeline.langid import LanguageFilter, predict_language
from dsm_engine.data_pipeline.synthetic_pages import _prose, write_seed_jsonl
from dsm_engine.data_pipeline.synthetic_warc import write_robustness_warc
from dsm_engine.data_pipeline.urls import matches_prefix, normalize_url, path_prefixes, url_domain
from dsm_engine.data_pipeline.warc import WarcPageReader, decode_html


def test_url_spellings_of_one_page_normalise_to_one_key():
    key = normalize_url("http://example.com/a/b?x=1&y=2")
    for spelling in [
        "HTTP://WWW.Example.COM:80/a/b/?y=2&x=1#section",
        "https://example.com/a/b?x=1&y=2&utm_source=feed&fbclid=abc",
        "http://example.com/a/%62?x=1&y=2",
    ]:
        assert normalize_url(spelling) == key
    assert normalize_url("http://example.com/a/index.html") == normalize_url(
        "http://example.com/a/"
    )
    assert normalize_url("http://example.com/a?x=1") != normalize_url("http://example.com/a?x=2")
    assert url_domain("https://WWW.Math.Example.org/x") == "math.example.org"


def test_path_prefixes_and_annotation_matching():
    url = "https://www.mathoverflow.net/questions/123/a-title"
    assert path_prefixes(url) == ["mathoverflow.net/questions/", "mathoverflow.net/questions/123/"]
    assert matches_prefix(url, ["mathoverflow.net/questions/"])
    assert matches_prefix(url, ["mathoverflow.net"])
    assert not matches_prefix(url, ["mathoverflow.net/tags/"])
    assert not matches_prefix("https://mathoverflow.network/questions/1", ["mathoverflow.net"])


def test_robustness_cases_are_counted_and_never_crash(tmp_path):
    cases = write_robustness_warc(tmp_path / "robust.warc.gz", huge_mb=50)
    reader = WarcPageReader(str(tmp_path), glob_pattern="robust.warc.gz", max_page_bytes=1_000_000)
    docs = {d.metadata["url"]: d for d in reader.run()}
    assert set(docs) == {
        cases["good"],
        cases["unknown_encoding"],
        cases["huge"],
        cases["after_corrupt"],
    }
    assert len(docs[cases["huge"]].text) == 1_000_000  # truncated, not dropped
    assert "страница" in docs[cases["unknown_encoding"]].text  # decoded by detection
    counts = {k: v.n for k, v in reader.stats.stats.items()}
    assert counts["empty_page"] == 1
    assert counts["bad_encoding"] == 1
    assert counts["page_truncated"] == 1
    assert counts["warc_corrupt_record"] == 1
    assert counts["warc_truncated_record"] == 1
    doc = docs[cases["good"]]
    assert doc.metadata["domain"] == "robust.example.org" and doc.metadata["date"].startswith(
        "2024-02-01"
    )
    # and the extractor copes with every page the reader let through
    assert len(list(MathHtmlExtractor().run(iter(docs.values())))) == 4


def test_decode_html_follows_declared_meta_then_detection():
    assert decode_html("héllo".encode("cp1252"), "windows-1252")[0] == "héllo"
    assert decode_html(b'<meta charset="gb2312"><p>' + "数学".encode("gb2312"))[1] == "gb18030"
    text, how = decode_html(("Привет, как дела? " * 30).encode("koi8-r"), "no-such-charset")
    assert how.startswith("detected:") and "Привет" in text


def test_language_id_on_real_pages(shared_data):
    reader = WarcPageReader(str(shared_data / "warc"), glob_pattern="*.warc.gz")
    docs = {d.metadata["url"]: d for d in MathHtmlExtractor().run(reader.run())}
    assert predict_language(docs["https://soldaini.net/facts/"].text)[0] == "en"
    assert predict_language(docs["http://0755krk.com/76104/list_4_1.html"].text)[0] == "zh"
    assert predict_language(docs["http://01spb.ru/company/"].text)[0] == "ru"
    lang = LanguageFilter()
    kept = {d.metadata["url"] for d in lang.run(iter(docs.values()))}
    assert (
        "https://soldaini.net/facts/" in kept and "http://0755krk.com/76104/list_4_1.html" in kept
    )
    assert (
        "http://01spb.ru/company/" not in kept
        and "http://0900-hovenier.nl/gelderland/oosterbeek/" not in kept
    )
    assert predict_language("Solve $x^2 = 4$ for the positive value of x, then add one.")[0] == "en"


def test_classifier_trains_and_separates_math_from_prose(tmp_path):
    import random

    write_seed_jsonl(tmp_path / "seed.jsonl", n=80)
    math = [json.loads(line)["text"] for line in (tmp_path / "seed.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    prose = [_prose(rng, topic, 12) for topic in ["cooking", "travel", "music", "pets"] * 25]
    cfg = ClassifierConfig(bucket=20000, epoch=25)
    model = train_classifier(math[:60], prose[:60], tmp_path / "clf.bin", cfg)
    again = train_classifier(math[:60], prose[:60], tmp_path / "clf2.bin", cfg)
    assert model.read_bytes() == again.read_bytes()  # reproducible training
    held_out_math = [math_score(t, model) for t in math[60:]]
    held_out_prose = [math_score(t, model) for t in prose[60:]]
    assert min(held_out_math) > max(held_out_prose)
    with pytest.raises(ValueError, match="positives and negatives"):
        train_classifier(math, [], tmp_path / "x.bin", cfg)


def test_select_top_ranks_by_score_and_respects_threshold_and_budget():
    rows = [("a", 0.9, 10), ("b", 0.95, 10), ("c", 0.7, 10), ("d", 0.3, 10), ("e", 0.9, 10)]
    assert select_top(rows, threshold=0.5) == ["b", "a", "e", "c"]
    assert select_top(rows, threshold=0.5, token_budget=25) == ["b", "a"]
    assert select_top(rows, threshold=0.92) == ["b"]


def test_domain_report_paths_and_seed_additions(tmp_path):
    rows = [
        PageRow(f"m{i}", f"https://mathsite.org/q/{i}", "mathsite.org", i < 8) for i in range(10)
    ]
    rows += [
        PageRow(f"b{i}", f"https://blog.net/{'math' if i < 3 else 'food'}/{i}", "blog.net", i < 2)
        for i in range(12)
    ]
    rows += [PageRow(f"n{i}", f"https://news.com/x/{i}", "news.com", i == 0) for i in range(20)]
    report = domain_report(rows, threshold=0.10)
    assert [d["domain"] for d in report["math_domains"]] == [
        "mathsite.org",
        "blog.net",
    ]  # news.com: 5%
    assert report["math_domains"][1]["fraction"] == round(2 / 12, 4)
    cands = {c["prefix"]: c for c in propose_paths(rows, ["mathsite.org", "blog.net"])}
    assert cands["blog.net/math/"] == {
        "prefix": "blog.net/math/",
        "pages": 3,
        "collected": 2,
        "uncollected": 1,
        "fraction": round(2 / 3, 4),
    }
    assert cands["mathsite.org/q/"]["uncollected"] == 2
    ann = tmp_path / "annotations.txt"
    ann.write_text(
        "# reviewed by hand\nblog.net/math/\nhttps://www.mathsite.org/q/   # all questions\n"
    )
    prefixes = read_annotations(ann)
    assert prefixes == ["blog.net/math/", "mathsite.org/q/"]
    assert seed_additions(rows, prefixes) == ["b2", "m8", "m9"]
    ann.write_text("blog.net/math/\nnot a path\n")
    with pytest.raises(ValueError, match="annotations.txt:2"):
        read_annotations(ann)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_annotations(tmp_path / "missing.txt")


def test_stat_sums_a_step_by_name():
    stats = {"📖 - READER: 🕷 WARC pages (robust)": {"pages_in": 3.0}}
    assert stat(stats, WarcPageReader.name, "pages_in") == 3
    assert stat(stats, WarcPageReader.name, "missing") == 0
    assert Path(__file__).is_file()
