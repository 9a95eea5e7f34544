"""Run folders are held by one run at a time (issue 23, item 3).

Reported: two ``resume=auto`` runs on one folder both trained; one died at a save with a raw
``[Errno 2] ... .metadata.tmp``, the other left ``latest`` at step 40 while ``metrics.jsonl``
stopped at 30. Now the second run is refused with one line naming the holder, a lock left by a
killed run is taken over, and forked children or other ranks never hold or wait on it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm_engine.folder_lock import FolderLock, FolderLockedError, lock_path
from dsm_engine.trainers.run_dir import RunDirError, prepare_run_dir

HERE = Path(__file__).resolve().parent
HOLDER = HERE / "_lock_holder.py"


def _start_holder(folder: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-P", str(HOLDER), str(folder), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        pytest.fail(f"lock holder did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


@pytest.fixture
def holder(tmp_path):
    """Start a process holding ``tmp_path / "run"`` (mode as the argument); killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str = "lock") -> subprocess.Popen[str]:
        procs.append(_start_holder(tmp_path / "run", mode))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _sft_args(tmp_path: Path, tokenizer: Path, *extra: str) -> list[str]:
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "response": "2"}) + "\n")
    return [
        "train",
        "sft",
        f"data.path={data}",
        f"data.tokenizer={tokenizer}",
        f"run_dir={tmp_path / 'run'}",
        "model.preset=tiny",
        "model.vocab_size=50304",
        "logging.progress=false",
        "logging.tensorboard=false",
        *extra,
    ]


def test_a_second_resume_auto_run_is_refused_with_one_line(
    holder, tmp_path, neox_tokenizer_path, capsys
):
    from dsm_engine.cli import main

    first = holder("run_dir")  # a run that has prepared its folder and is training
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert main(_sft_args(tmp_path, neox_tokenizer_path, "resume=auto")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"pid {first.pid} on host {socket.gethostname()}" in err and "is in use" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # the first run's, untouched
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "config.yaml"]


def test_a_lock_left_by_a_killed_run_is_taken_over(holder, tmp_path, capsys):
    dead = holder("run_dir")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    run = prepare_run_dir(tmp_path / "run", {"second": True}, resume="auto", latest=lambda r: None)
    assert f"taking over the lock of pid {dead.pid}" in capsys.readouterr().err
    with pytest.raises(FolderLockedError, match=f"pid {os.getpid()} "):
        FolderLock(tmp_path / "run")  # held now, by this process
    run.release()
    with FolderLock(tmp_path / "run") as again:  # released cleanly: nothing to take over
        assert again.held and again.took_over is None


def test_a_second_lock_in_the_same_process_is_refused_until_released(tmp_path):
    first = FolderLock(tmp_path / "run", command="dsm train pretrain")
    with pytest.raises(FolderLockedError) as info:
        FolderLock(tmp_path / "run")
    assert info.value.holder.pid == os.getpid()
    assert "dsm train pretrain" in str(info.value)
    first.release()
    first.release()  # idempotent
    FolderLock(tmp_path / "run").release()


def test_every_path_to_a_folder_shares_its_lock(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "run")
    assert lock_path(tmp_path / "alias") == lock_path(tmp_path / "run")
    with FolderLock(tmp_path / "run"), pytest.raises(FolderLockedError):
        FolderLock(tmp_path / "alias")


def test_racing_processes_cannot_both_win(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", str(HOLDER), str(tmp_path / "run"), "race", "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost", "lost", "lost", "won"]


def test_children_forked_by_the_holder_do_not_keep_the_lock(tmp_path):
    lock = FolderLock(tmp_path / "run")
    started, tell = os.pipe()
    child = os.fork()
    if child == 0:  # a dataloader worker, a datatrove task, ...
        os.write(tell, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(started, 1)  # the child is past fork (and its at-fork hooks)
        lock.release()
        FolderLock(tmp_path / "run").release()  # the living child does not hold it
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_file_system_without_flock_runs_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    import fcntl

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    lock = FolderLock(tmp_path / "run")
    assert not lock.held
    assert "is not locked" in capsys.readouterr().err
    lock.release()


@pytest.mark.dist
def test_other_ranks_get_the_refusal_instead_of_waiting(holder, tmp_path, torchrun):
    first = holder("lock")
    out = tmp_path / "ranks.json"
    torchrun(HERE / "run_dir_rank_worker.py", tmp_path / "run", tmp_path / "free", out, timeout=300)
    ranks = json.loads(out.read_text())
    for rank in ("0", "1"):
        assert f"pid {first.pid}" in ranks[rank]["held"], ranks
        assert ranks[rank]["free"] == "ok", ranks
    # only rank 0 held the free folder's lock: rank 1 was refused by it, naming rank 0
    assert ranks["1"]["free_locked_by"] == ranks["0"]["pid"], ranks
    assert not (tmp_path / "run").exists()  # the refused run wrote nothing


def test_refusal_is_a_run_dir_error(holder, tmp_path):
    holder("lock")
    with pytest.raises(RunDirError, match=r"^run_dir .* is in use by pid \d+ on host "):
        prepare_run_dir(tmp_path / "run", {}, overwrite=True, latest=lambda r: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["data", "mine", "--warc", "none/*.warc.gz", "--seed", "seed.jsonl", "--out"],
        ["quickstart", "--no-progress", "--out"],
    ],
    ids=["data-mine", "quickstart"],
)
def test_mining_and_the_quickstart_refuse_a_folder_in_use(holder, tmp_path, capsys, command):
    from dsm_engine.cli import main

    first = holder("lock")
    assert main([*command, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is in use by pid {first.pid} on host" in err, err
    assert not (tmp_path / "run").exists()
