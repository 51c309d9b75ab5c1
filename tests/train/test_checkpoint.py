"""Nothing lost: a killed training job resumes from its last checkpoint and ends
exactly where an uninterrupted run ends (issue 7, item 1).

The headline test starts ``python -m qtbench.cli train`` as a real subprocess,
SIGKILLs it mid-epoch, restarts it and compares the final weights, trace and
summary with an uninterrupted run.  The in-process tests crash the loop at
chosen steps for several kinds of method (stateful, per-epoch, per-batch,
joint) and cover the atomic commit, the safe trainer-state format and the
guards that make a resume start afresh rather than continue wrongly.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import qtbench.io as qio
import qtbench.train.loop as train_mod
from qtbench.io import atomic_directory, committed_directory
from qtbench.models import load_model
from qtbench.methods.base import Budget, DatasetInfo
from qtbench.methods.registry import build_method
from qtbench.train.checkpoint import STATE_FILE, Position, load_checkpoint, save_checkpoint, set_rng_state, truncate_lines
from qtbench.train.loop import train
from qtbench.train.step import Counters
from tests.conftest import REPO, make_records
from tests.train.test_loop import run_config

# --------------------------------------------------------------------------- helpers


def write_records(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_records(n)))
    return path


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    model = load_model(str(path), device="cpu")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def trace_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]


def summary_without_time(out: Path) -> dict:
    summary = json.loads((out / "train_summary.json").read_text())
    summary.pop("wall_time_s")
    return summary


def assert_same_run(resumed: Path, reference: Path) -> float:
    """Bitwise-equal weights, identical trace rows and summary; returns the max abs diff."""
    rows, expected_rows = trace_rows(resumed), trace_rows(reference)
    assert [(r["step"], r["micro_batch"]) for r in rows] == [(r["step"], r["micro_batch"]) for r in expected_rows]
    assert len({r["micro_batch"] for r in rows}) == len(rows)  # no duplicated row
    assert rows == expected_rows  # selections, thresholds and losses too
    assert summary_without_time(resumed) == summary_without_time(reference)
    got, expected = state_dict(resumed), state_dict(reference)
    diff = max_abs_diff(got, expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), f"{key} differs by {float((got[key] - expected[key]).abs().max())}"
    return diff


class Crash(Exception):
    """Stands in for a kill: raised at the start of an optimizer step."""


def crash_after(monkeypatch, windows: int) -> None:
    real = train_mod.train_window
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > windows:
            raise Crash(f"crash before window {calls['n']}")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_window", wrapper)


def checkpoint_meta(state: Path) -> dict | None:
    found = committed_directory(state / "checkpoint")
    try:
        return json.loads((found / "checkpoint.json").read_text()) if found else None
    except (OSError, ValueError):
        return None  # caught between two renames or mid-write: look again


# --------------------------------------------------------------------------- a real SIGKILL


def stateful_config(**overrides):
    """InfoBatch (loss history, per-epoch plan with weights) + PPL token pruning
    (a stats pass), four epochs (1-2 pruned from the history, 3 annealed),
    warmup, clipping: every piece of state matters."""
    return run_config("infobatch+ppl", "0.5", "0.5", epochs=4, warmup_ratio=0.1, max_grad_norm=1.0,
                      checkpoint_every=5, stats_chunk=64, **overrides)


def cli_train(cfg_file: Path, base: Path, data: Path, out: Path, state: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "QTBENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "qtbench.cli", "-v", "train", "--run-config", f"@{cfg_file}",
           "--base-model", str(base), "--data", str(data), "--out", str(out), "--state-dir", str(state),
           "--no-progress"]
    with log.open("w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    data = write_records(tmp_path / "sft.jsonl", 128)  # epochs of 32, ~16, ~16 (pruned), 32 steps
    cfg = stateful_config()
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(cfg))
    out, state = tmp_path / "runs" / "checkpoint", tmp_path / "runs" / "state"

    first = cli_train(cfg_file, tiny_model_dir, data, out, state, tmp_path / "first.log")
    deadline = time.time() + 300
    while True:
        meta = checkpoint_meta(state)
        if meta and meta["epoch"] == 1 and meta["window"] > 0:  # mid-way through InfoBatch's pruned epoch
            break
        assert first.poll() is None, "training ended before the kill: " + (tmp_path / "first.log").read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint in epoch 1"
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(60) == -signal.SIGKILL
    assert not out.exists() and not out.with_name("checkpoint.tmp").exists()  # nothing partial
    killed_at = checkpoint_meta(state)
    assert killed_at is not None and 0 < killed_at["optimizer_steps"]

    # what a kill during a save and mid-row leaves behind: an unfinished
    # checkpoint.tmp and a half-written trace row - both must be ignored
    junk = state / "checkpoint.tmp"
    junk.mkdir(exist_ok=True)
    (junk / STATE_FILE).write_bytes(b"\x80\x02half a pickle")
    with (state / "trace.jsonl").open("a") as trace:
        trace.write('{"step": 99999, "micro_batch": 99999, "half": ')

    second = cli_train(cfg_file, tiny_model_dir, data, out, state, tmp_path / "second.log")
    reference = tmp_path / "reference"  # trained meanwhile, in this process, without checkpoints
    train({**cfg, "train": {**cfg["train"], "checkpoint_every": 0}}, reference, str(tiny_model_dir), str(data),
          progress=False)
    assert second.wait(300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert f"epoch 1, step {killed_at['optimizer_steps']}" in log  # it resumed, it did not start over
    assert not state.exists()  # the state folder goes once the checkpoint folder is committed

    kept = [(r["epoch"], r["samples_kept"]) for r in trace_rows(reference)]
    assert sum(n for e, n in kept if e == 1) < 128 and sum(n for e, n in kept if e == 3) == 128  # pruned, annealed
    assert assert_same_run(out, reference) == 0.0


# --------------------------------------------------------------------------- crashes in process

CASES = {
    # name: (method, r_s, r_t, method_options, train overrides, windows before the crash)
    "infobatch-mid-pruned-epoch": ("infobatch", "0.5", "1", {}, {"epochs": 3}, 17),
    "random-per-epoch": ("random", "0.5", "1", {"random": {"mode": "epoch"}}, {"epochs": 3}, 10),
    "random-pair-per-batch": ("random+random", "0.5", "0.5", {"random": {"mode": "batch"}}, {"epochs": 2}, 10),
    "q_tuning-accum2-warmup": ("q_tuning", "0.5", "0.5", {}, {"epochs": 2, "grad_accum": 2, "warmup_ratio": 0.2,
                                                           "checkpoint_every": 2}, 9),
    "infobatch+ppl-at-epoch-end": ("infobatch+ppl", "0.5", "0.5", {}, {"epochs": 3, "checkpoint_every": 4}, 13),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crash_and_resume_equals_uninterrupted(case, tiny_model_dir, tmp_path, monkeypatch):
    method, r_s, r_t, options, overrides, crash_at = CASES[case]
    data = write_records(tmp_path / "sft.jsonl", 48)
    cfg = run_config(method, r_s, r_t, **{"checkpoint_every": 3, "stats_chunk": 64, **overrides})
    cfg["method_options"] = options
    out, state = tmp_path / "out", tmp_path / "state"

    crash_after(monkeypatch, crash_at)
    with pytest.raises(Crash):
        train(cfg, out, str(tiny_model_dir), str(data), state_dir=state, progress=False)
    monkeypatch.undo()
    assert not out.exists() and not out.with_name("out.tmp").exists()
    meta = checkpoint_meta(state)
    every = cfg["train"]["checkpoint_every"]
    assert meta["optimizer_steps"] == crash_at // every * every
    # the crash flushed rows written after the checkpoint: resume must drop them
    assert len((state / "trace.jsonl").read_text().splitlines()) > meta["trace_rows"]
    if case == "infobatch+ppl-at-epoch-end":
        # a kill between the commit's two renames leaves only checkpoint.old, plus a stale .tmp
        os.replace(state / "checkpoint", state / "checkpoint.old")
        (state / "checkpoint.tmp").mkdir()

    train(cfg, out, str(tiny_model_dir), str(data), state_dir=state, progress=False)
    reference = tmp_path / "reference"
    train({**cfg, "train": {**cfg["train"], "checkpoint_every": 0}}, reference, str(tiny_model_dir), str(data),
          progress=False)
    assert assert_same_run(out, reference) == 0.0
    assert not state.exists()


# --------------------------------------------------------------------------- the saved state


def test_checkpoint_restores_optimizer_scheduler_rng_method_and_plan(tiny_model_dir, tmp_path):
    from transformers import get_cosine_schedule_with_warmup

    model = load_model(str(tiny_model_dir), device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    for _ in range(3):
        model(input_ids=torch.tensor([[1, 5, 7, 9]])).logits.sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    method = build_method("infobatch", Budget(0.5), {}, seed=0)
    data = DatasetInfo(make_records(8), [3] * 8)
    method.observe(torch.arange(8), torch.linspace(1, 8, 8), 0)
    plan = method.plan_epoch(1, 3, data)
    position = Position(1, 2, plan, 1, Counters(optimizer_steps=3, trace_rows=6, loss_sum=1.5))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    save_checkpoint(tmp_path, model, optimizer, scheduler, method, position, fingerprint="abc")
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    # the trainer state is plain tensors, lists and numbers
    raw = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=True)
    assert raw["counters"]["optimizer_steps"] == 3 and raw["planned_epoch"] == 1

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    found = load_checkpoint(tmp_path, "abc")
    assert found is not None
    _, state = found
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws

    fresh_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh_sched = get_cosine_schedule_with_warmup(fresh_opt, 2, 10)
    fresh_opt.load_state_dict(state["optimizer"])
    fresh_sched.load_state_dict(state["scheduler"])
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr() and fresh_sched.last_epoch == 3
    for group, ref in zip(fresh_opt.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert all(torch.equal(group[k], ref[k]) for k in ref)
    fresh_method = build_method("infobatch", Budget(0.5), {}, seed=0)
    fresh_method.load_state_dict(state["method"])
    assert fresh_method.sample.history == method.sample.history
    assert fresh_method.plan_epoch(1, 3, data) == plan  # the cached plan, not a new draw
    assert state["plan"]["indices"] == plan.indices and state["plan"]["weights"] == plan.weights
    assert (state["epoch"], state["window"]) == (1, 2)

    assert load_checkpoint(tmp_path, "another run") is None  # a changed config never resumes


class _Payload:
    """A pickle that runs code when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_unsafe_trainer_state_is_refused_not_executed(tiny_model_dir, tmp_path, caplog):
    data = write_records(tmp_path / "sft.jsonl", 12)
    cfg = run_config(max_steps=2, checkpoint_every=1)
    out, state = tmp_path / "out", tmp_path / "state"
    with pytest.raises(Crash):
        with pytest.MonkeyPatch.context() as mp:
            crash_after(mp, 1)
            train(cfg, out, str(tiny_model_dir), str(data), state_dir=state, progress=False)
    marker = tmp_path / "pwned"
    with (state / "checkpoint" / STATE_FILE).open("wb") as handle:
        pickle.dump({"format": 2, "payload": _Payload(marker)}, handle, protocol=2)
    with caplog.at_level(logging.WARNING, logger="qtbench.train.checkpoint"):
        summary = train(cfg, out, str(tiny_model_dir), str(data), state_dir=state, progress=False)
    assert not marker.exists()
    assert "cannot read checkpoint" in caplog.text and "starting afresh" in caplog.text
    assert summary["optimizer_steps"] == 2 and len(trace_rows(out)) == 2


def test_changed_config_starts_afresh(tiny_model_dir, tmp_path, monkeypatch, caplog):
    data = write_records(tmp_path / "sft.jsonl", 24)
    out, state = tmp_path / "out", tmp_path / "state"
    crash_after(monkeypatch, 4)
    with pytest.raises(Crash):
        train(run_config(checkpoint_every=2), out, str(tiny_model_dir), str(data), state_dir=state, progress=False)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="qtbench.train.checkpoint"):
        summary = train(run_config(checkpoint_every=2, lr=5e-4), out, str(tiny_model_dir), str(data),
                        state_dir=state, progress=False)
    assert "different run config" in caplog.text
    rows = trace_rows(out)
    assert [r["micro_batch"] for r in rows] == list(range(6)) and summary["optimizer_steps"] == 6


def test_state_folder_keeps_foreign_files(tiny_model_dir, records_file, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    train(run_config(max_steps=2, checkpoint_every=1), tmp_path / "out", str(tiny_model_dir), str(records_file),
          state_dir=state, progress=False)
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- atomic commit


def test_atomic_directory_survives_a_kill_between_renames(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as tmp:
        (tmp / "v").write_text("1")
    real_replace = os.replace
    calls = {"n": 0}

    def killed_after_first_rename(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("killed")  # the new folder is complete in .tmp, the old one in .old
        real_replace(src, dst)

    monkeypatch.setattr(qio.os, "replace", killed_after_first_rename)
    with pytest.raises(SystemExit):
        with atomic_directory(target, durable=False) as tmp:
            (tmp / "v").write_text("2")
    monkeypatch.undo()
    assert not target.exists()
    assert committed_directory(target) == tmp_path / "checkpoint.old"
    assert (committed_directory(target) / "v").read_text() == "1"
    with atomic_directory(target) as tmp:  # the next save clears the leftovers
        (tmp / "v").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (target / "v").read_text() == "3"


def test_atomic_directory_error_in_block_keeps_previous(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("failed mid-way")
    assert (target / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_trace_truncation_is_by_complete_rows(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4')
    assert truncate_lines(path, 2) and path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert not truncate_lines(path, 3)  # fewer rows than the checkpoint counts: start afresh
    assert truncate_lines(tmp_path / "none.jsonl", 0) and not truncate_lines(tmp_path / "none.jsonl", 1)


# --------------------------------------------------------------------------- Snakemake


@pytest.mark.slow
def test_snakemake_rerun_incomplete_resumes(tiny_model_dir, tmp_path):
    """Kill Snakemake and its job together, then ``snakemake --rerun-incomplete``."""
    data = write_records(tmp_path / "sft.jsonl", 128)
    cfg = stateful_config()
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    (tmp_path / "Snakefile").write_text(
        "rule train:\n"
        "    output: directory('runs/x/checkpoint')\n"
        "    params: state='runs/x/state'\n"
        f"    shell: '{sys.executable} -m qtbench.cli train --run-config @run.json --base-model {tiny_model_dir} "
        f"--data {data} --state-dir {{params.state}} --out {{output}} --no-progress'\n")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(tmp_path), "-s",
           str(tmp_path / "Snakefile")]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "runs" / "x" / "state"
    deadline = time.time() + 300
    while not ((meta := checkpoint_meta(state)) and meta["epoch"] >= 1):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    unlock = subprocess.run(cmd + ["--unlock"], env=env, capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    again = subprocess.run(cmd + ["--rerun-incomplete"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    reference = tmp_path / "reference"
    train(cfg, reference, str(tiny_model_dir), str(data), progress=False)
    assert assert_same_run(tmp_path / "runs" / "x" / "checkpoint", reference) == 0.0
