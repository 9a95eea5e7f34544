"""Step profiling (``profile`` config section) and ``dsm profile RUN_DIR``, on tiny CPU runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainers_testlib import pretrain_args

from dsm_engine.trainers.pretrain import main as pretrain_main
from dsm_engine.trainers.profile_report import main as profile_main
from dsm_engine.trainers.profiling import ProfileConfig, StepProfiler, StepWork

PREFIXES = ("time/", "throughput/", "mfu/", "memory/")
TOKENS_PER_STEP = 8 * 32  # TINY: global batch 8, seq_length 32


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def profiled_run(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("profiled") / "run"
    args = pretrain_args(
        corpus,
        run,
        "train.steps=4",
        "checkpoint.every=2",
        "profile.enabled=true",
        "profile.trace_steps=[2,3]",
        "profile.peak_tflops=0.001",
    )
    assert pretrain_main(args) == 0
    return run


def test_phases_add_up_to_the_step_and_checkpoints_are_timed(profiled_run):
    rows = _rows(profiled_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        phases = ["data", "forward_backward", "optimizer"]
        phases += ["checkpoint"] if r["step"] % 2 == 0 else []
        timed = sum(r[f"time/{p}_s"] for p in phases)
        assert all(r[f"time/{p}_s"] > 0 for p in phases)
        assert timed + r["time/other_s"] == pytest.approx(r["time/step_s"], rel=1e-9)
        assert r["time/other_s"] < 0.25 * r["time/step_s"], r  # the phases cover the step
        assert r["time/step_s"] >= r["step_time_s"]  # step_time_s leaves the checkpoint out
        assert ("time/checkpoint_s" in r) == (r["step"] % 2 == 0)


def test_tokens_per_s_and_mfu_follow_from_tokens_and_time(profiled_run):
    from dsm_engine.models.config import model_config
    from dsm_engine.trainers.flops import train_flops_per_token

    flops = train_flops_per_token(model_config("tiny", vocab_size=50304, seq_length=32))
    for r in _rows(profiled_run):
        train_s = r["time/forward_backward_s"] + r["time/optimizer_s"]
        assert r["throughput/train_tokens_per_s"] == pytest.approx(TOKENS_PER_STEP / train_s)
        peak = 0.001e12  # profile.peak_tflops
        assert r["mfu/train"] == pytest.approx(TOKENS_PER_STEP * flops / train_s / peak)
        assert r["mfu/step"] == pytest.approx(TOKENS_PER_STEP * flops / r["time/step_s"] / peak)
        assert "throughput/gen_tokens_per_s" not in r  # pretraining generates nothing


def test_peak_memory_is_recorded_per_phase(profiled_run):
    r = _rows(profiled_run)[-1]
    peaks = {k: v for k, v in r.items() if k.startswith("memory/")}
    assert set(peaks) >= {"memory/forward_backward_peak_mib", "memory/step_peak_mib"}
    assert peaks["memory/step_peak_mib"] == max(peaks.values()) > 50  # torch alone is > 50 MiB
    assert r["mem_gib"] * 1024 >= peaks["memory/step_peak_mib"] - 1e-6


def test_phases_file_keeps_the_order_and_offsets_of_each_step(profiled_run):
    lines = (profiled_run / "profile" / "phases.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    names = [p["name"] for p in rows[1]["phases"]]
    assert names == ["data", "forward_backward", "optimizer", "checkpoint"]
    for r in rows:
        ends = 0.0
        for p in r["phases"]:
            assert p["start_s"] >= ends - 1e-9  # in order, not overlapping
            ends = p["start_s"] + p["dur_s"]
        assert ends <= r["step_s"] + 1e-9
    by_step = {r["step"]: r for r in _rows(profiled_run)}
    assert rows[2]["step_s"] == pytest.approx(by_step[3]["time/step_s"])


def test_trace_covers_the_requested_steps_with_our_labels(profiled_run):
    trace = json.loads((profiled_run / "profile" / "trace_steps_2-3.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"dsm/step_2", "dsm/step_3", "dsm/data", "dsm/forward_backward"} <= names
    assert {"dsm/optimizer", "dsm/checkpoint"} <= names
    assert not {"dsm/step_1", "dsm/step_4"} & names


def test_dsm_profile_prints_the_table_and_draws_a_timeline(profiled_run, capsys):
    assert profile_main([str(profiled_run)]) == 0
    out = capsys.readouterr().out
    for word in ("phase", "p50", "p95", "share", "forward_backward", "checkpoint", "other"):
        assert word in out
    png = profiled_run / "profile" / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = profiled_run / "t1.png"
    assert profile_main([str(profiled_run), "--step", "1", "--out", str(other)]) == 0
    assert other.stat().st_size > 1000


def test_dsm_profile_explains_a_missing_run_or_missing_data(corpus, tmp_path, capsys):
    assert profile_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = tmp_path / "plain"
    assert pretrain_main(pretrain_args(corpus, run, "train.steps=2", "checkpoint.every=2")) == 0
    assert not any(k.startswith(PREFIXES) for r in _rows(run) for k in r)  # off: no keys
    assert not (run / "profile").exists()
    assert profile_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "no profiling data" in err and "profile.enabled=true" in err and str(run) in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("profile.trace_steps=[3,2]", "profile.trace_steps must be [a, b] with 1 <= a <= b"),
        ("profile.trace_steps=[0,2]", "profile.trace_steps must be [a, b] with 1 <= a <= b"),
        ("profile.peak_tflops=0", "profile.peak_tflops must be > 0"),
    ],
)
def test_bad_profile_config_names_the_field(corpus, tmp_path, capsys, override, message):
    args = pretrain_args(corpus, tmp_path / "run", "profile.enabled=true", override)
    assert pretrain_main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_a_trace_without_profiling_is_refused():
    from dsm_engine.config import ConfigError

    with pytest.raises(ConfigError, match="profile.trace_steps needs profile.enabled=true"):
        ProfileConfig(trace_steps=[1, 2])


def test_off_the_profiler_hands_out_one_shared_no_op(tmp_path):
    prof = StepProfiler(ProfileConfig(), run_dir=tmp_path, device=torch.device("cpu"))
    assert prof.phase("a") is prof.phase("b")
    prof.begin_step(1)
    with prof.phase("a"):
        pass
    assert prof.end_step(StepWork(train_tokens=1.0, train_flops=1.0)) == {}
    assert not (tmp_path / "profile").exists()


def test_repeated_phases_add_up_and_split_keeps_the_span(tmp_path):
    cfg = ProfileConfig(enabled=True, memory=False)
    with StepProfiler(cfg, run_dir=tmp_path, device=torch.device("cpu")) as prof:
        prof.begin_step(1)
        with prof.phase("rollout"):
            sum(range(200_000))
        span = prof._spans[0]
        prof.split_last("rollout", [("generation", span[2] / 2), ("verifier", 1e9)], rest="pack")
        for _ in range(3):  # e.g. mu updates
            with prof.phase("forward_backward"):
                sum(range(100_000))
        m = prof.end_step(StepWork(train_tokens=10.0, train_flops=1.0, gen_tokens=4.0))
    assert m["time/generation_s"] == pytest.approx(span[2] / 2)
    assert m["time/verifier_s"] == pytest.approx(span[2] / 2)  # clipped to what was left
    assert m["time/pack_s"] == pytest.approx(0.0, abs=1e-12)
    assert m["throughput/gen_tokens_per_s"] == pytest.approx(4.0 / m["time/generation_s"])
    assert m["throughput/train_tokens_per_s"] == pytest.approx(10.0 / m["time/forward_backward_s"])
    assert "mfu/train" not in m and not any(k.startswith("memory/") for k in m)  # CPU, no peak
    row = json.loads((tmp_path / "profile" / "phases.jsonl").read_text())
    assert [p["name"] for p in row["phases"]] == ["generation", "verifier", "pack"] + [
        "forward_backward"
    ] * 3


def test_sft_run_is_profiled_like_pretraining(sft_file, neox_tokenizer_path, tmp_path):
    from trainers_testlib import TINY

    from dsm_engine.trainers.sft import main as sft_main

    run = tmp_path / "sft"
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu-sft.yaml"
    args = [
        "--config",
        str(config),
        f"data.path={sft_file}",
        f"data.tokenizer={neox_tokenizer_path}",
        f"run_dir={run}",
        *TINY,
        "train.steps=2",
        "checkpoint.every=2",
        "profile.enabled=true",
    ]
    assert sft_main(args) == 0
    last = _rows(run)[-1]
    phases = ("data", "forward_backward", "optimizer", "checkpoint")
    assert all(last[f"time/{p}_s"] > 0 for p in phases)
    assert last["throughput/train_tokens_per_s"] > 0


class _Stop(Exception):
    pass


def test_reward_model_trainer_is_profiled_and_resume_drops_rows_after_the_checkpoint(tmp_path):
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.trainers.config import load_run_config
    from dsm_engine.trainers.reward_model import RewardModelConfig, run_reward_model

    data = tmp_path / "orm.jsonl"
    with data.open("w") as f:
        for i in range(40):
            resp = [3 + (i * 7 + j) % 200 for j in range(3 + i % 5)]
            row = {"prompt_ids": [5, 6, 7], "response_ids": resp, "label": float(i % 2)}
            f.write(json.dumps(row) + "\n")
    run = tmp_path / "rm"
    argv = [
        "kind=orm",
        f"run_dir={run}",
        f"data.train_path={data}",
        "model.seq_length=16",
        "train.micro_batch_size=10",
        "train.global_batch_size=20",
        "train.steps=4",
        "checkpoint.every=2",
        "logging.progress=false",
        "logging.tensorboard=false",
        "profile.enabled=true",
    ]

    def stop_after_three(step: int, _m: dict) -> None:
        if step == 3:
            raise _Stop

    cfg, _ = load_run_config(RewardModelConfig, argv)
    with pytest.raises(_Stop):
        run_reward_model(cfg, on_step_end=stop_after_three)
    destroy_parallel()
    cfg, _ = load_run_config(RewardModelConfig, [*argv, "resume=auto"])
    try:
        run_reward_model(cfg)
    finally:
        destroy_parallel()
    rows = [json.loads(x) for x in (run / "profile" / "phases.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 of the first attempt dropped
    assert [p["name"] for p in rows[-1]["phases"]] == [
        "data",
        "forward_backward",
        "optimizer",
        "eval",
        "checkpoint",
    ]
    last = _rows(run)[-1]
    assert last["time/eval_s"] > 0 and last["throughput/train_tokens_per_s"] > 0


@pytest.mark.dist
def test_data_parallel_run_writes_one_phase_file_and_a_trace_per_rank(corpus, tmp_path):
    from trainers_testlib import run_cli

    run = tmp_path / "dp2"
    args = pretrain_args(
        corpus,
        run,
        "train.steps=2",
        "checkpoint.every=10",
        "parallel.dp=2",
        "profile.enabled=true",
        "profile.trace_steps=[2,2]",
    )
    proc = run_cli(["train", "pretrain", *args], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "profile").iterdir()) == [
        "phases.jsonl",
        "trace_steps_2-2.json",
        "trace_steps_2-2.rank1.json",
    ]
    assert all("time/forward_backward_s" in r for r in _rows(run))
