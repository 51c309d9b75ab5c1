"""LESS (baselines/less.py): the scoring math by hand, the selection, the target
checks at DAG build, and warm-up + scoring on a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baselines import less
from qtbench.config import ConfigError, deep_merge, default_config_path, read_config_file, validate_config
from qtbench.methods.base import Budget, DatasetInfo
from qtbench.preflight import check_methods


# --------------------------------------------------------------------------- the math, by hand


def test_adam_direction_is_less_update_without_bias_correction():
    g = torch.tensor([1.0, -2.0, 0.0])
    m = torch.tensor([0.5, 0.0, 1.0])
    v = torch.tensor([0.25, 1.0, 0.0])
    got = less.adam_direction(g, m, v)
    # m' = 0.9 m + 0.1 g ; v' = 0.999 v + 0.001 g^2 ; m' / sqrt(v' + 1e-8)
    want = [(0.45 + 0.1) / math.sqrt(0.24975 + 0.001 + 1e-8),
            (0.0 - 0.2) / math.sqrt(0.999 + 0.004 + 1e-8),
            0.9 / math.sqrt(0.0 + 1e-8)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_projection_is_seeded_rademacher_and_blocking_does_not_change_it():
    cached = less.RademacherProjector(10, 4, seed=3, block=3)
    streamed = less.RademacherProjector(10, 4, seed=3, block=3, cache_elements=0)
    matrix = cached.project(torch.eye(10))
    assert set(torch.unique(matrix * 2).tolist()) == {-1.0, 1.0}  # +-1/sqrt(4)
    x = torch.randn(5, 10)
    assert torch.allclose(cached.project(x), streamed.project(x), atol=1e-6)
    assert torch.equal(matrix, less.RademacherProjector(10, 4, seed=3, block=3).project(torch.eye(10)))
    assert not torch.equal(matrix, less.RademacherProjector(10, 4, seed=4, block=3).project(torch.eye(10)))


def test_checkpoint_weights_are_mean_lrs_normalised():
    assert less.checkpoint_weights([3e-5, 1e-5]) == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        less.checkpoint_weights([0.0, 0.0])


def test_influence_is_lr_weighted_mean_cosine_then_max_over_targets():
    # two checkpoints, weights 0.75 / 0.25; three training samples; targets a (2 examples) and b (1)
    train = [torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
             torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])]
    targets = [{"a": torch.tensor([[1.0, 0.0], [0.0, 3.0]]), "b": torch.tensor([[-1.0, 0.0]])},
               {"a": torch.tensor([[0.0, 1.0], [0.0, 1.0]]), "b": torch.tensor([[1.0, 0.0]])}]
    scores, per_task = less.influence_scores(train, targets, [0.75, 0.25])
    r = 1 / math.sqrt(2)
    # task a: ckpt1 mean cos = [(1+0)/2, (0+1)/2, (r+r)/2]; ckpt2 = [1, 1, 0]
    a = [0.75 * 0.5 + 0.25 * 1, 0.75 * 0.5 + 0.25 * 1, 0.75 * r + 0.25 * 0]
    # task b: ckpt1 = [-1, 0, -r]; ckpt2 = [0, 0, -1]
    b = [0.75 * -1 + 0, 0.0, 0.75 * -r + 0.25 * -1]
    assert per_task["a"].tolist() == pytest.approx(a)
    assert per_task["b"].tolist() == pytest.approx(b)
    assert scores.tolist() == pytest.approx([max(x, y) for x, y in zip(a, b)])
    # cosine: the scale of a gradient does not matter
    scaled = [t * 7 for t in train]
    assert less.influence_scores(scaled, targets, [0.75, 0.25])[0].tolist() == pytest.approx(scores.tolist())


def test_keeps_top_k_ties_to_lower_index_and_never_held_out():
    pruner = less.Less(Budget(0.5, 1.0))
    scores = [0.2, 0.9, float("nan"), 0.5, 0.5, 0.5]
    plan = pruner.plan_epoch(0, 1, _info(scores))
    # k = round(6 * 0.5) = 3: 0.9, then the first two of the tied 0.5s
    assert plan.indices == [1, 3, 4]
    assert plan.trace["held_out"] == 1
    alone = less.Less(Budget(0.125 * 0.5, 1.0)).plan_epoch(0, 1, _info([float(i) for i in range(16)]))
    assert alone.indices == [15]  # r_s * r_t of 16 = 1 sample


def _info(scores):
    return DatasetInfo(records=[{}] * len(scores), response_lengths=[1] * len(scores), static_scores=scores)


# --------------------------------------------------------------------------- options and the target at DAG build


def _config(**less_options):
    return _merged({"methods": ["less"], "method_options": {"less": less_options}})


def _merged(update):
    """``update`` over the default config (as ``--configfile`` merges); the less options replace the default's."""
    default = read_config_file(default_config_path())
    default["method_options"].pop("less", None)
    return validate_config(deep_merge(default, update))


def test_target_missing_from_the_config_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"method_options\.less\.target\[1\].*'world_mmlu' is not in the config"):
        check_methods(_config(target=["world_gsm8k", "world_mmlu"]))
    check_methods(_config(target=["world_gsm8k", "heldout"]))  # both known


def test_unreadable_target_file_fails_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"method_options\.less\.target\.mine.*does not exist"):
        check_methods(_config(target={"mine": str(tmp_path / "nope.jsonl")}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"method_options\.less\.target\.mine.*unreadable"):
        check_methods(_config(target={"mine": str(bad)}))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\n")
    check_methods(_config(target={"mine": str(good)}))


def test_bad_option_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"method_options\.less.*'proj_dim'"):
        check_methods(_config(proj_dim=0))
    with pytest.raises(ConfigError, match=r"method_options\.less.*'target'"):
        check_methods(_config(target="test_set"))
    with pytest.raises(ConfigError, match=r"method_options\.less\.projdim': unknown option of method 'less'"):
        check_methods(_config(projdim=8))


def test_a_variant_is_checked_under_its_own_key():
    cfg = _merged({"methods": ["less_gsm"], "variants": {"less_gsm": {"method": "less",
                                                                            "options": {"target": ["nope"]}}}})
    with pytest.raises(ConfigError, match=r"variants\.less_gsm\.options\.target\[0\]"):
        check_methods(cfg)


def test_warmup_key_ignores_target_and_projection():
    base = less.warmup_key({})
    assert less.warmup_key({"target": ["heldout"], "proj_dim": 16}) == base
    assert less.warmup_key({"lr": 1e-3}) != base


# --------------------------------------------------------------------------- warm-up + scoring, tiny model


def test_warmup_and_scores_on_a_tiny_model(tiny_model_dir, records_file, tmp_path):
    from qtbench.methods.static import score_static

    options = {"warmup_fraction": 0.25, "warmup_epochs": 2, "lr": 1e-2, "batch_size": 4, "micro_batch_size": 2,
               "lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.0, "proj_dim": 16, "max_length": 64,
               "holdout": 0.125, "target": ["heldout"]}
    warm = tmp_path / "warmup"
    meta = less.warmup(str(tiny_model_dir), str(records_file), warm, options)
    assert [e["dir"] for e in meta["epochs"]] == ["epoch1", "epoch2"] and len(meta["subset"]) == 6
    assert all((warm / e["dir"] / "moments.safetensors").is_file() for e in meta["epochs"])
    assert meta["epochs"][0]["mean_lr"] > meta["epochs"][1]["mean_lr"] > 0  # linear decay

    out = tmp_path / "less.json"
    scores = score_static("less", str(tiny_model_dir), str(records_file), options, out,
                          inputs={"warmup": str(warm), "eval_tasks": [], "tasks_dir": None})
    held = [i for i, s in enumerate(scores) if math.isnan(s)]
    assert len(scores) == 24 and len(held) == 3  # round(24 * 0.125)
    assert all(-1 <= s <= 1 for s in scores if not math.isnan(s))
    again = score_static("less", str(tiny_model_dir), str(records_file), options, tmp_path / "again.json",
                         inputs={"warmup": str(warm), "eval_tasks": [], "tasks_dir": None})
    assert json.dumps(scores) == json.dumps(again)  # seeded end to end
    with pytest.raises(ValueError, match="warmup"):
        score_static("less", str(tiny_model_dir), str(records_file), options, tmp_path / "x.json")
