"""The training loop: masked updates, loss normalisation, outputs and traces."""

from __future__ import annotations

import io
import json

import pytest
import torch

from qtbench.config import RunSpec
from qtbench.data.batches import collate, tokenize_records
from qtbench.models import load_model, load_tokenizer
from qtbench.methods.base import Method, Selection
from qtbench.train.loop import epoch_order, train
from qtbench.train.step import Counters, StepContext, train_window
from tests.conftest import make_records


def run_config(method="full", r_s="1", r_t="1", **train_overrides):
    run = RunSpec("tiny", method, r_s, r_t, 0).as_dict()
    train_cfg = {"epochs": 1, "micro_batch_size": 4, "grad_accum": 1, "lr": 1e-3, "weight_decay": 0.0,
                 "warmup_ratio": 0.0, "max_grad_norm": None, "max_length": 64, "max_steps": None, "threads": 1,
                 "stats_chunk": 7, "checkpoint_every": 0, "log_every": 1, "bucket_by_length": False}
    train_cfg.update(train_overrides)
    return {"experiment": "test", "run": run, "model": {"name": "tiny", "path": "x", "chat_template": False},
            "data": {"format": "auto", "on_bad_record": "skip"}, "train": train_cfg, "method_options": {},
            "wandb": {"mode": "disabled"}}


def weights(path):
    model = load_model(str(path), device="cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_grad_accum_2x2_equals_1x4(tiny_model_dir, records_file, tmp_path):
    one = train(run_config(micro_batch_size=4, grad_accum=1, max_steps=3), tmp_path / "a", str(tiny_model_dir),
                str(records_file), progress=False)
    two = train(run_config(micro_batch_size=2, grad_accum=2, max_steps=3), tmp_path / "b", str(tiny_model_dir),
                str(records_file), progress=False)
    assert one["optimizer_steps"] == two["optimizer_steps"] == 3
    assert one["loss_tokens"] == two["loss_tokens"]
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    base = weights(tiny_model_dir)
    moved = max(float((wa[k] - base[k]).abs().max()) for k in wa)
    assert moved > 1e-4  # the runs did train
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-6, rtol=1e-5)


def test_full_run_outputs_and_effective_budget(tiny_model_dir, records_file, tmp_path):
    out = tmp_path / "ckpt"
    summary = train(run_config(epochs=2, max_length=128), out, str(tiny_model_dir), str(records_file), progress=False)
    for name in ("model.safetensors", "tokenizer.json", "train_summary.json", "trace.jsonl", "data_report.json"):
        assert (out / name).exists(), name
    assert not (tmp_path / "ckpt.state").exists()
    assert summary["optimizer_steps"] == 2 * 6  # 24 records / micro-batch 4, two epochs
    assert summary["samples_trained"] == 48
    assert summary["effective_sample_fraction"] == 1.0
    assert summary["effective_token_fraction"] == 1.0
    rows = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert len(rows) == summary["micro_batches"] == 12
    assert sum(r["response_tokens_kept"] for r in rows) == summary["loss_tokens"]
    # full data: only training FLOPs (6N per trained token), no stats pass
    assert summary["input_tokens_scored"] == 0
    assert summary["flops_relative"] == pytest.approx(1.0)
    # padding: each micro-batch runs on rows x its longest record (seeded order of each epoch)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    lengths = [len(e.input_ids) for e in tokenize_records(records, tokenizer, 128)]  # 81 to 103 tokens
    grid = sum(len(b) * max(lengths[i] for i in b)
               for epoch in (0, 1) for b in epoch_order(list(range(len(records))), 0, epoch, 4))
    assert summary["input_positions_trained"] == grid
    assert summary["input_tokens_trained"] == 2 * sum(lengths)
    assert summary["padding_fraction_trained"] == pytest.approx(1 - 2 * sum(lengths) / grid)
    assert summary["padding_fraction_trained"] > 0


class KeepFirst(Method):
    """Keeps sample 0 and, inside it, the first two response positions."""

    name = "keep_first"
    required_stats = frozenset({"nll"})

    def select(self, stats):
        keep = torch.zeros(stats.batch_size, dtype=torch.bool)
        keep[0] = True
        tokens = torch.zeros_like(stats.response_mask)
        first = stats.response_mask[0].nonzero().squeeze(1)[:2]
        tokens[0, first] = True
        return Selection(keep, tokens, torch.ones(stats.batch_size), {"custom": 1})


def test_masked_update_trains_only_kept_tokens(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu")
    examples = tokenize_records(make_records(4), tokenizer, 64)
    counters = Counters()
    trace = io.StringIO()
    ctx = StepContext(model, KeepFirst(), examples, tokenizer.pad_token_id, torch.device("cpu"), counters,
                      stats_chunk=5, trace=trace)
    train_window(ctx, [[0, 1, 2, 3]], 0, {})
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # the same loss by hand: sample 0 alone, its first two response positions, mean over them
    model.zero_grad()
    batch = collate([examples[0]], tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    positions = (labels != -100).nonzero().squeeze(1)[:2]
    loss = torch.nn.functional.cross_entropy(logits[positions], labels[positions])
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, atol=1e-6, rtol=1e-5)
    row = json.loads(trace.getvalue())
    assert row["samples_kept"] == 1 and row["response_tokens_kept"] == 2 and row["custom"] == 1
    assert counters.samples_trained == 1 and counters.samples_seen == 4


def test_epoch_order_is_seeded_and_complete():
    a = epoch_order(list(range(10)), seed=3, epoch=1, micro_batch=4)
    assert a == epoch_order(list(range(10)), seed=3, epoch=1, micro_batch=4)
    assert a != epoch_order(list(range(10)), seed=3, epoch=2, micro_batch=4)
    assert [len(b) for b in a] == [4, 4, 2]
    assert sorted(i for b in a for i in b) == list(range(10))
    lengths = [5, 50, 6, 51, 7, 52, 8, 53, 9, 54]
    bucketed = epoch_order(list(range(10)), seed=3, epoch=1, micro_batch=5, lengths=lengths)
    assert sorted(map(sorted, bucketed)) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_random_pair_draws_without_a_stats_pass(tiny_model_dir, records_file, tmp_path):
    cfg = run_config("random+random", "0.5", "0.5")
    cfg["method_options"] = {"random": {"mode": "batch"}}
    summary = train(cfg, tmp_path / "out", str(tiny_model_dir), str(records_file), progress=False)
    assert summary["input_tokens_scored"] == 0  # no forward spent on scoring
    assert summary["optimizer_steps"] == 6  # per-batch mode keeps the number of steps
    assert summary["samples_trained"] == 6 * 2  # K = round(4 * 0.5) per micro-batch
    assert summary["effective_sample_fraction"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "out" / "trace.jsonl").read_text().splitlines()]
    assert all(r["samples_kept"] == 2 for r in rows)


def test_trace_carries_per_sample_decisions(tiny_model_dir, records_file, tmp_path):
    train(run_config("q_tuning", "0.25", "0.5"), tmp_path / "out", str(tiny_model_dir), str(records_file), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "trace.jsonl").read_text().splitlines()]
    seen = []
    for row in rows:
        samples = row["samples"]
        assert len(samples["id"]) == row["batch_size"] == len(samples["quadrant"]) == len(samples["ppl"])
        assert sum(samples["kept"]) == row["samples_kept"] >= 1  # K = max(1, round(4 * 0.25)) = 1
        for kept, quadrant in zip(samples["kept"], samples["quadrant"]):
            assert (quadrant in ("Q2", "Q4", "Q2+", "Q4+")) == kept
        seen += samples["id"]
    assert sorted(seen) == list(range(24))  # one epoch: every record once


def test_epoch_plan_is_traced(tiny_model_dir, records_file, tmp_path):
    cfg = run_config("random", "0.5", "1", epochs=2)
    summary = train(cfg, tmp_path / "out", str(tiny_model_dir), str(records_file), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "trace.jsonl").read_text().splitlines()]
    plans = [r for r in rows if "epoch_plan" in r]
    assert [r["epoch"] for r in plans] == [0, 1]  # the first row of each epoch
    for plan in plans:
        assert len(plan["epoch_plan"]["id"]) == 12 and plan["epoch_plan"]["n_records"] == 24
        trained = {i for r in rows if r["epoch"] == plan["epoch"] for i in r["samples"]["id"]}
        assert trained == set(plan["epoch_plan"]["id"])
    assert summary["samples_trained"] == 24


def test_gradient_checkpointing_trains_the_same_weights(tiny_model_dir, records_file, tmp_path):
    """``train.gradient_checkpointing`` recomputes activations in the backward:
    the same update (to float rounding), for full weights and for LoRA."""
    import qtbench.train.loop as train_mod

    seen = []
    original = train_mod.train_window

    def spy(ctx, *args, **kwargs):
        flag = getattr(ctx.model, "is_activation_checkpointing", None)  # transformers >= 5.x name
        seen.append(bool(flag if flag is not None else ctx.model.is_gradient_checkpointing))
        return original(ctx, *args, **kwargs)

    for lora in ({"rank": 0}, {"rank": 4, "alpha": 8, "dropout": 0.0, "target": "all-linear"}):
        out = {}
        for on in (False, True):
            seen.clear()
            train_mod.train_window = spy
            try:
                train(run_config("q_tuning", "0.5", "0.5", max_steps=3, gradient_checkpointing=on, lora=lora),
                      tmp_path / f"{lora['rank']}-{on}", str(tiny_model_dir), str(records_file), progress=False)
            finally:
                train_mod.train_window = original
            assert seen and all(flag == on for flag in seen)
            out[on] = weights(tmp_path / f"{lora['rank']}-{on}")
        base = weights(tiny_model_dir)
        assert max(float((out[True][k] - base[k]).abs().max()) for k in base) > 1e-4
        for key in out[False]:
            torch.testing.assert_close(out[True][key], out[False][key], atol=1e-6, rtol=1e-5)
