"""W&B can fail in any way; training never does."""

from __future__ import annotations

import json
import sys
import types

import pytest

from qtbench import tracking
from tests.train.test_loop import run_config


def test_disabled_is_a_no_op():
    tracker = tracking.start_run({"mode": "disabled"}, name="x", group="g", job_type="train", config={})
    tracker.log({"a": 1})
    tracker.finish()
    assert not tracker.active


def test_offline_run_writes_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = tracking.start_run({"mode": "offline", "project": "qtbench-test"}, name="r", group="g",
                                 job_type="train", config={"a": 1}, tags=["full"], directory=tmp_path)
    assert tracker.active
    tracker.log({"train/loss": 1.5}, step=1)
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


class Exploding:
    def __init__(self, *a, **k):
        self.summary = {}

    def log(self, *a, **k):
        raise ConnectionError("network is unreachable")

    def finish(self):
        raise ConnectionError("network is unreachable")


def test_init_failure_is_a_warning(monkeypatch):
    fake = types.SimpleNamespace(init=lambda **k: (_ for _ in ()).throw(OSError("no network")), Settings=lambda **k: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.warns(RuntimeWarning, match="wandb sync"):
        tracker = tracking.start_run({"mode": "online"}, name="x", group="g", job_type="train", config={})
    tracker.log({"a": 1})
    tracker.finish()


def test_failure_mid_training_keeps_training(tiny_model_dir, records_file, tmp_path, monkeypatch):
    from qtbench.train.loop import train

    fake = types.SimpleNamespace(init=lambda **k: Exploding(), Settings=lambda **k: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = run_config(max_steps=3)
    cfg["wandb"] = {"mode": "online"}
    with pytest.warns(RuntimeWarning, match="wandb sync"):
        summary = train(cfg, tmp_path / "out", str(tiny_model_dir), str(records_file), progress=False)
    assert summary["optimizer_steps"] == 3
    stored = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert stored["optimizer_steps"] == 3
