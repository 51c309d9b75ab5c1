"""The learning-rate schedule spans the optimizer steps a run really takes.

Epoch-level pruners train fewer steps in some epochs (InfoBatch prunes only
after its first epoch and only outside its annealing epochs), so a schedule
sized from epoch 0 would never decay.  Each run below must end with the
schedule at its end value (0) on its last step, and the schedule's total must
equal the steps taken."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from qtbench.train.loop import train
from qtbench.train.schedule import CosineWithWarmup, make_scheduler, resize, steps_per_epoch
from tests.train.test_loop import run_config


def test_values_equal_transformers_cosine_with_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    ours_opt, theirs_opt = torch.optim.SGD([param], lr=1.0), torch.optim.SGD([param], lr=1.0)
    ours, theirs = make_scheduler(ours_opt, 40, 0.1), get_cosine_schedule_with_warmup(theirs_opt, 4, 40)
    for _ in range(40):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), abs=0)
        ours_opt.step(), theirs_opt.step(), ours.step(), theirs.step()
    assert ours.get_last_lr() == [0.0]


def test_resize_moves_the_end_and_keeps_warmup():
    multiplier = CosineWithWarmup(total_steps=10, warmup_steps=2)
    assert multiplier(1) == 0.5 and multiplier(2) == 1.0
    assert multiplier(6) == pytest.approx(0.5)  # half-way through the 8 decay steps
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = make_scheduler(optimizer, 10, 0.2)
    for _ in range(4):
        optimizer.step(), scheduler.step()
    resize(scheduler, 6)  # at step 4 of 6: progress (4 - 2) / 4 -> lr 2 * 0.5 * (1 + cos(pi / 2))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    for _ in range(2):
        optimizer.step(), scheduler.step()
    assert scheduler.get_last_lr() == [0.0]
    assert steps_per_epoch(24, 4, 1) == 6 and steps_per_epoch(9, 4, 2) == 2 and steps_per_epoch(25, 4, 2) == 4


@pytest.mark.parametrize("method, options, epochs, overrides", [
    ("infobatch", {"infobatch": {"anneal": 0.0}}, 3, {}),                # epochs 1-2 pruned by loss history
    ("infobatch", {"infobatch": {"anneal": 0.34}}, 3, {}),               # epoch 1 pruned, epoch 2 anneals (full)
    ("infobatch", {"infobatch": {"budget_forced": True}}, 3, {}),        # the Q-Tuning authors' code
    ("infobatch", {"infobatch": {"prune_ratio": 0.5, "anneal": 0.0}}, 3, {}),  # the InfoBatch paper's fixed p
    ("random", {"random": {"mode": "epoch"}}, 2, {}),                    # a random subset per epoch
    ("longest", {}, 2, {}),                                              # static-like: the same subset each epoch
    ("q_tuning", {}, 2, {"max_steps": 5}),                               # max_steps cuts the run short
])
def test_the_last_step_ends_the_schedule(method, options, epochs, overrides, tiny_model_dir, records_file, tmp_path):
    cfg = run_config(method, "0.5", "1" if method != "q_tuning" else "0.5", epochs=epochs, warmup_ratio=0.1,
                     **overrides)
    cfg["method_options"] = options
    summary = train(cfg, tmp_path / "out", str(tiny_model_dir), str(records_file), progress=False)
    assert summary["final_lr"] == 0.0
    assert summary["lr_schedule_steps"] == summary["optimizer_steps"] == summary["planned_steps"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "trace.jsonl").read_text().splitlines()]
    per_epoch = [sum(1 for r in rows if r["epoch"] == e) for e in range(epochs)]
    if "max_steps" in overrides:
        assert summary["optimizer_steps"] == overrides["max_steps"]
    else:  # every epoch ran, each with ceil(kept / 4) steps
        assert summary["optimizer_steps"] == sum(per_epoch) and all(per_epoch)
    if method == "infobatch" and options["infobatch"].get("anneal") == 0.0 and "prune_ratio" not in options["infobatch"]:
        assert per_epoch[0] == math.ceil(24 / 4) and per_epoch[1] < per_epoch[0]  # fewer steps once pruned
