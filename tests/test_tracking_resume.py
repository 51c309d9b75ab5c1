"""W&B run ids are stable, so a requeued job continues its own run; the
aggregate run uploads the tables and plots as an artifact."""

from __future__ import annotations

import sys
import types

import pytest

from qtbench import tracking

CFG = {"experiment": "e", "run": {"run_id": "tiny/full/s1-t1/seed0"}, "train": {"lr": 1e-3, "threads": 1, "log_every": 5},
       "wandb": {"mode": "offline"}}


def start(tmp_path, config=CFG, name="tiny/full/s1-t1/seed0", job_type="train"):
    return tracking.start_run({"mode": "offline", "project": "qtbench-test"}, name=name, group="e",
                              job_type=job_type, config=config, directory=tmp_path)


def test_a_requeued_job_gets_the_same_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ids = []
    for _ in range(2):  # the job, then the same job again after preemption
        tracker = start(tmp_path)
        assert tracker.active
        ids.append(tracker._run.id)
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.finish()
    assert ids[0] == ids[1] == tracking.stable_run_id("e", "tiny/full/s1-t1/seed0", "train", tracking.config_key(CFG))
    assert "/" not in ids[0] and ids[0].startswith("e-tiny-full-s1-t1-seed0-train-")


def test_run_id_follows_what_changes_the_numbers_only():
    key = tracking.config_key(CFG)
    cosmetic = {**CFG, "train": {**CFG["train"], "threads": 8, "log_every": 1}, "wandb": {"mode": "online"}}
    assert tracking.config_key(cosmetic) == key
    assert tracking.config_key({**CFG, "train": {**CFG["train"], "lr": 2e-3}}) != key
    assert tracking.config_key({"eval": {"limit": 8, "threads": 4}}) == tracking.config_key({"eval": {"limit": 8, "threads": 1}})
    # the training and the evaluation of one run are two W&B runs
    assert tracking.stable_run_id("e", "r", "train") != tracking.stable_run_id("e", "r", "eval")
    assert tracking.stable_run_id("e", "tiny/base/eval", "eval").startswith("e-tiny-base-eval-")


def test_init_asks_wandb_to_resume(monkeypatch):
    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        return types.SimpleNamespace(id=kwargs["id"])

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Settings=lambda **k: None))
    monkeypatch.setenv("WANDB_MODE", "online")
    tracking.start_run({"mode": "online"}, name="r", group="g", job_type="eval", config={"a": 1})
    assert seen["resume"] == "allow" and seen["reinit"] == "create_new"
    assert seen["id"] == tracking.stable_run_id("g", "r", "eval", tracking.config_key({"a": 1}))


def test_aggregate_artifact_holds_tables_and_plots_and_checkpoints_only_when_asked(tmp_path, monkeypatch):
    logged = []

    class Artifact:
        def __init__(self, name, type, metadata=None):
            self.name, self.type, self.entries = name, type, []

        def add_dir(self, path, name=None):
            self.entries.append(name)

        def add_file(self, path):
            self.entries.append(path)

    run = types.SimpleNamespace(log_artifact=logged.append, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Artifact=Artifact))
    tracker = tracking.Tracker(run, "offline")
    for folder in ("tables", "plots", "runs/tiny/full/s1-t1/seed0/checkpoint"):
        (tmp_path / folder).mkdir(parents=True)
    runs = [tmp_path / "runs/tiny/full/s1-t1/seed0/checkpoint"]
    tracking.log_experiment_artifacts(tracker, "exp", tmp_path / "tables", tmp_path / "plots", runs)
    assert [(a.name, a.type, a.entries) for a in logged] == [("exp-results", "results", ["tables", "plots"])]
    logged.clear()
    tracking.log_experiment_artifacts(tracker, "exp", tmp_path / "tables", tmp_path / "plots", runs, checkpoints=True)
    assert [(a.name, a.type) for a in logged] == [("exp-results", "results"), ("exp-tiny-full-s1-t1-seed0", "model")]


def test_artifact_failure_is_a_warning(tmp_path, monkeypatch):
    def explode(artifact):
        raise ConnectionError("upload failed")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Artifact=lambda *a, **k: types.SimpleNamespace(
        add_dir=lambda *a, **k: None, add_file=lambda *a: None)))
    tracker = tracking.Tracker(types.SimpleNamespace(log_artifact=explode), "online")
    (tmp_path / "tables").mkdir()
    with pytest.warns(RuntimeWarning, match="log_artifact"):
        tracking.log_experiment_artifacts(tracker, "exp", tmp_path / "tables", None)
    assert not tracker.active


def test_offline_artifact_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "main.csv").write_text("run_id,avg\nx,1\n")
    tracker = start(tmp_path / "w", config={"tasks": []}, name="e/summary", job_type="aggregate")
    tracking.log_experiment_artifacts(tracker, "e", tmp_path / "tables", None)
    assert tracker.active
    tracker.finish()
