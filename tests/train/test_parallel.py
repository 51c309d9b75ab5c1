"""The distributed decision path (qtbench/train/parallel.py, the decision in
qtbench/train/step.py) on CPU: 2 and 3
processes over gloo make exactly the decisions one process makes on the same
global micro-batch - kept samples, kept tokens, weights and trace - for
Q-Tuning and baseline pairs (random draws, sample and token scores, a
statistic from ``extras``)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp

from qtbench import launch
from qtbench.train import parallel as qd
from qtbench.train.step import decide_on_shards
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import build_method

#: (method, options) pairs every worker decides with, one process vs several.
METHODS = [
    ("q_tuning", {}),
    ("q_tuning", {"q_tuning": {"preset": "paper_text"}}),
    ("entropy+ppl", {}),
    ("random+random", {"random": {"mode": "batch"}}),
    ("infobatch+fastv", {}),
]
BUDGET = Budget(0.25, 0.5)


def global_batch(batch: int, seed: int) -> tuple[BatchStats, list[int]]:
    """Stats of one global micro-batch as one process's stats pass leaves them:
    rows of different lengths right-padded to the longest, zeros (False) at
    padded positions, prompt then response; and each row's attended length."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 30, (batch,), generator=gen).tolist()
    width = max(lengths)
    nll = torch.rand(batch, width, generator=gen) * 4
    entropy = torch.rand(batch, width, generator=gen) * 6
    attention_received = torch.rand(batch, width, generator=gen)
    attention = torch.zeros(batch, width, dtype=torch.bool)
    response = torch.zeros(batch, width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        attention[row, :n] = True
        prompt = int(torch.randint(1, n - 2, (1,), generator=gen))
        response[row, prompt:n] = True
    stats = BatchStats.from_tensors(nll * response, entropy * attention, response, attention,
                                    sample_ids=torch.arange(100, 100 + batch) * 7, step=3, epoch=1,
                                    attention_received=attention_received * attention)
    return stats, lengths


def local_shard(stats: BatchStats, lengths: list[int], rows: slice) -> BatchStats:
    """What one rank's own stats pass gives for ``rows``: those rows collated
    alone, i.e. cut to their own longest row."""
    width = max(lengths[rows], default=0)
    cut = stats.take(torch.arange(stats.batch_size)[rows])
    return BatchStats(cut.nll[:, :width], cut.entropy[:, :width], cut.response_mask[:, :width],
                      cut.attention_mask[:, :width], cut.sample_ids, cut.step, cut.epoch,
                      {k: v[:, :width] for k, v in cut.extras.items()})


def _worker(rank: int, world: int, port: int, out_dir: str, cases: list[tuple[int, int]]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for batch, seed in cases:
            stats, lengths = global_batch(batch, seed)
            shard = qd.shard_rows(batch, world)[rank]
            local = local_shard(stats, lengths, shard)
            gathered, rows, widths = qd.gather_stats(local)
            results[key(batch, seed, "gathered")] = stats_dict(gathered)
            for name, options in METHODS:
                method = build_method(name, BUDGET, options, seed=0)
                selection = qd.scatter_selection(decide_on_shards(method, local), rows[rank], widths[rank])
                results[key(batch, seed, name, options)] = selection_dict(selection)
        results["sum"] = qd.global_sum(rank + 1)
        results["sum_float"] = qd.global_sum(0.5)
        ids, losses = qd.gather_observations(torch.tensor([rank]), torch.tensor([float(rank) / 2]))
        results["observations"] = (ids, losses)
        results["broadcast"] = qd.broadcast_object({"rank": rank}, src=0)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))  # plain tensors: loads with weights_only
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, tmp_path, cases) -> list[dict]:
    mp.spawn(_worker, args=(world, launch.free_port(), str(tmp_path), cases), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def key(*parts) -> str:
    return repr(parts)


def stats_dict(stats: BatchStats) -> dict:
    return {"nll": stats.nll, "entropy": stats.entropy, "response_mask": stats.response_mask,
            "attention_mask": stats.attention_mask, "sample_ids": stats.sample_ids, "step": stats.step,
            "epoch": stats.epoch, "extras": dict(stats.extras)}


def selection_dict(selection) -> dict:
    return {"sample_keep": selection.sample_keep, "token_keep": selection.token_keep,
            "sample_weight": selection.sample_weight, "trace": dict(selection.trace),
            "per_sample": dict(getattr(selection, "per_sample", {}) or {})}


def assert_same_selection(local: dict, reference, rows: slice, width: int) -> None:
    assert torch.equal(local["sample_keep"], reference.sample_keep[rows])
    assert torch.equal(local["token_keep"], reference.token_keep[rows, :width])
    assert not reference.token_keep[rows, width:].any()
    assert torch.equal(local["sample_weight"], reference.sample_weight[rows])
    assert local["trace"] == reference.trace
    per_sample = getattr(reference, "per_sample", {}) or {}
    assert local["per_sample"] == {k: list(v[rows]) for k, v in per_sample.items()}


def check_against_one_process(results: list[dict], world: int, cases) -> None:
    for batch, seed in cases:
        stats, lengths = global_batch(batch, seed)
        shards = qd.shard_rows(batch, world)
        for rank, shard in enumerate(shards):
            gathered = results[rank][key(batch, seed, "gathered")]
            # the gathered stats are exactly the one-process stats of the global batch
            for name in ("nll", "entropy", "response_mask", "attention_mask", "sample_ids"):
                assert torch.equal(gathered[name], getattr(stats, name)), name
            assert torch.equal(gathered["extras"]["attention_received"], stats.extras["attention_received"])
            assert (gathered["step"], gathered["epoch"]) == (stats.step, stats.epoch)
        for name, options in METHODS:
            reference = build_method(name, BUDGET, options, seed=0).select(stats)
            assert reference.sample_keep.any()
            for rank, shard in enumerate(shards):
                width = max(lengths[shard], default=0)
                assert_same_selection(results[rank][key(batch, seed, name, options)], reference, shard, width)
            # the ranks' rows put back together are the one-process decision
            kept = torch.cat([results[r][key(batch, seed, name, options)]["sample_keep"] for r in range(world)])
            assert torch.equal(kept, reference.sample_keep)


def test_two_processes_decide_like_one(tmp_path):
    cases = [(8, 0), (8, 1), (16, 2)]
    results = run_ranks(2, tmp_path, cases)
    check_against_one_process(results, 2, cases)
    assert [r["sum"] for r in results] == [3, 3]
    assert [r["sum_float"] for r in results] == [1.0, 1.0]
    for r in results:
        ids, losses = r["observations"]
        assert ids.tolist() == [0, 1] and losses.tolist() == [0.0, 0.5]
        assert r["broadcast"] == {"rank": 0}


def test_three_processes_uneven_and_empty_shards(tmp_path):
    # 8 rows on 3 ranks: shards of 3, 3, 2; 2 rows on 3 ranks: one rank has none
    cases = [(8, 5), (2, 6)]
    results = run_ranks(3, tmp_path, cases)
    check_against_one_process(results, 3, cases)


def test_single_process_is_a_pass_through():
    stats, _ = global_batch(8, 0)
    method = build_method("q_tuning", BUDGET, {}, seed=0)
    assert not qd.is_distributed()
    gathered, rows, widths = qd.gather_stats(stats)
    assert gathered is stats and rows == [slice(0, 8)] and widths == [stats.nll.shape[1]]
    selection = decide_on_shards(method, stats)
    reference = method.select(stats)
    assert torch.equal(selection.token_keep, reference.token_keep)
    assert qd.global_sum(5) == 5
    assert qd.broadcast_object("x") == "x"


def test_shard_rows_cover_the_batch_in_order():
    for batch in range(0, 20):
        for world in range(1, 9):
            shards = qd.shard_rows(batch, world)
            assert len(shards) == world
            assert [i for s in shards for i in range(batch)[s]] == list(range(batch))
            sizes = [s.stop - s.start for s in shards]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError):
        qd.shard_rows(4, 0)


def test_scatter_refuses_a_kept_padding_position():
    stats, lengths = global_batch(4, 0)
    selection = build_method("full", BUDGET, {}, seed=0).select_without_stats(stats.response_mask)
    selection.token_keep[0, -1] = True
    short = lengths[0] - 1
    if short < stats.nll.shape[1] - 1:
        with pytest.raises(RuntimeError, match="padded position"):
            qd.scatter_selection(selection, slice(0, 1), short)


# --------------------------------------------------------------------------- GPUs of one machine


def test_launch_command_wraps_a_module_in_torchrun():
    command = [sys.executable, "-m", "qtbench.cli", "train", "--out", "x"]
    assert launch.launch_command(command, 1) == command
    wrapped = launch.launch_command(command, 4, port=29511)
    assert wrapped[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert wrapped[wrapped.index("--nproc_per_node") + 1] == "4"
    assert wrapped[wrapped.index("--master_port") + 1] == "29511"
    assert wrapped[wrapped.index("-m", 3):] == ["-m", "qtbench.cli", "train", "--out", "x"]


def test_claim_gpus_never_hands_out_a_gpu_twice(tmp_path):
    gpus = ["0", "1", "2"]
    with launch.claim_gpus(2, tmp_path, gpus) as first:
        assert len(first) == 2
        with launch.claim_gpus(1, tmp_path, gpus) as second:
            assert len(second) == 1 and second[0] not in first
            # a fourth GPU is not there: a third job waits, then times out
            with pytest.raises(TimeoutError):
                with launch.claim_gpus(1, tmp_path, gpus, timeout_s=0.2, poll_s=0.05):
                    pass
    with launch.claim_gpus(3, tmp_path, gpus) as all_three:  # everything was given back
        assert sorted(all_three) == gpus
    with pytest.raises(RuntimeError, match="shows 3"):
        with launch.claim_gpus(4, tmp_path, gpus):
            pass


def test_claim_gpus_waits_for_a_gpu_to_be_given_back(tmp_path):
    gpus = ["0"]
    released = threading.Event()

    def hold():
        with launch.claim_gpus(1, tmp_path / "locks", gpus):
            time.sleep(0.3)
        released.set()

    # the holder is another process in real use; flock locks are per open file, so a thread shows it too
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    started = time.monotonic()
    with launch.claim_gpus(1, tmp_path / "locks", gpus, timeout_s=5, poll_s=0.05) as got:
        assert got == ["0"] and released.is_set()
    assert time.monotonic() - started >= 0.1
    holder.join()


def test_launch_cli_pins_the_command_to_its_gpus(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5", "QTBENCH_GPU_LOCK_DIR": str(tmp_path)}
    env.pop("SLURM_JOB_ID", None)
    show = [sys.executable, "-c", "import os; print('SEEN=' + os.environ['CUDA_VISIBLE_DEVICES'])"]
    done = subprocess.run([sys.executable, "-m", "qtbench.launch", "launch", "--gpus", "1", "--", *show],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "SEEN=3" in done.stdout
    none = subprocess.run([sys.executable, "-m", "qtbench.launch", "launch", "--gpus", "0", "--", *show],
                          capture_output=True, text=True, env=env, timeout=60)
    assert none.returncode == 0 and "SEEN=\n" in none.stdout  # a job without GPUs sees none
    failing = subprocess.run([sys.executable, "-m", "qtbench.launch", "launch", "--gpus", "0", "--",
                              sys.executable, "-c", "raise SystemExit(7)"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert failing.returncode == 7


# --------------------------------------------------------------------------- the trainer on two processes

TRAIN_METHODS = ["q_tuning", "infobatch+ppl", "random+random", "entropy+fastv", "full"]


def _tiny_world(root: Path) -> tuple[Path, Path]:
    from qtbench.world.generate import build_world
    from qtbench.world.pretrain import pretrain_base_model

    build_world({"seed": 0, "n_countries": 30, "n_people": 8, "n_sft": 40, "n_reference": 8, "n_eval_per_task": 4},
                root / "world")
    pretrain_base_model(root / "world", {"steps": 0, "max_minutes": 0.1, "hidden_size": 32, "n_layers": 2,
                                         "n_heads": 2, "intermediate_size": 64, "vocab_size": 512},
                        root / "base", 0)
    return root / "world" / "sft.jsonl", root / "base"


def _train_configs(data: Path, base: Path) -> list[dict]:
    from qtbench.config import expand_runs, train_config, validate_config

    cfg = validate_config({
        "experiment": "dist", "models": {"tiny": {"path": str(base)}}, "data": {"source": str(data)},
        "train": {"epochs": 2, "micro_batch_size": 7, "grad_accum": 2, "lr": 1e-2, "warmup_ratio": 0.0,
                  "max_length": 128, "checkpoint_every": 0, "log_every": 1, "threads": 1},
        "methods": TRAIN_METHODS, "budgets": [{"r_s": 0.5, "r_t": 0.5}], "seeds": [0],
        "method_options": {"random": {"mode": "batch"}, "infobatch": {"anneal": 0.0}},
        "eval": {"tasks": [{"name": "unused"}]}, "wandb": {"mode": "disabled"},
    })
    return [train_config(cfg, run) for run in expand_runs(cfg)]


def _train_worker(rank: int, world: int, port: int, root: str, data: str, base: str, configs: list[dict]) -> None:
    import torch.distributed as dist

    from qtbench.train.loop import train

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "QTBENCH_NO_PROGRESS": "1"})
    try:
        for cfg in configs:
            out = Path(root) / f"world{world}" / cfg["run"]["run_id"]
            train(cfg, out / "checkpoint", base, data, state_dir=out / "state", progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def assert_close(a, b, where: str) -> None:
    """Equal trace rows: every decision (ids, kept flags, counts, quadrants)
    exactly; statistics and losses up to float rounding (each rank's forward
    runs on fewer rows, which may change the last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for x, y in zip(a, b):
            assert_close(x, y, where)
    else:
        assert a == b, where


@pytest.mark.slow
def test_training_on_two_processes_equals_one(tmp_path):
    """`qtbench train` under 2 processes (gloo, each rank half of every micro-batch,
    a 7-row micro-batch so the shards are uneven) makes the decisions of one
    process and ends with the same weights (up to float summation order)."""
    import json

    from safetensors.torch import load_file

    data, base = _tiny_world(tmp_path)
    configs = _train_configs(data, base)
    _train_worker(0, 1, 0, str(tmp_path), str(data), str(base), configs)
    mp.spawn(_train_worker, args=(2, launch.free_port(), str(tmp_path), str(data), str(base), configs), nprocs=2, join=True)
    for cfg in configs:
        run_id = cfg["run"]["run_id"]
        one, two = (tmp_path / f"world{w}" / run_id / "checkpoint" for w in (1, 2))
        rows = [[json.loads(line) for line in (d / "trace.jsonl").read_text().splitlines()] for d in (one, two)]
        assert len(rows[0]) == len(rows[1]) > 0, run_id
        for a, b in zip(*rows):
            assert_close(a, b, run_id)
        summaries = [json.loads((d / "train_summary.json").read_text()) for d in (one, two)]
        for key in ("optimizer_steps", "samples_seen", "samples_trained", "loss_tokens", "input_tokens_trained",
                    "input_tokens_scored", "micro_batches", "empty_micro_batches"):
            assert summaries[0][key] == summaries[1][key], (run_id, key)
        assert summaries[1]["processes"] == 2
        weights = [load_file(str(d / "model.safetensors")) for d in (one, two)]
        base_weights = load_file(str(base / "model.safetensors"))
        for name, tensor in weights[0].items():
            # each rank's matmuls run on fewer rows and round differently; AdamW at lr 1e-2 turns
            # that into up to ~1e-4 absolute - over two orders of magnitude below what training moved
            moved = float((tensor - base_weights[name]).abs().max())
            assert moved > 1e-3, (run_id, name)  # it did train
            assert float((tensor - weights[1][name]).abs().max()) <= 1e-2 * moved, (run_id, name)


# --------------------------------------------------------------------------- one window's gradient

WINDOW_METHODS = ["q_tuning", "ppl_sample+ppl", "random+random", "full"]


def _window_setup():
    """A tiny random Llama, 13 examples of varied lengths, a window of two
    global micro-batches (7 and 6 rows: uneven shards)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qtbench.data.batches import IGNORE_INDEX, TokenizedExample

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    model = LlamaForCausalLM(config).double()  # float64: the ranks' sums agree to ~1e-12
    gen = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(13):
        p, r = int(torch.randint(2, 8, (1,), generator=gen)), int(torch.randint(3, 12, (1,), generator=gen))
        ids = torch.randint(3, 64, (p + r,), generator=gen).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * p + ids[p:], False))
    return model, examples, [list(range(0, 7)), list(range(7, 13))]


def _window_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import io

    import torch.distributed as dist

    from qtbench.train.step import Counters, StepContext, train_window

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for name in WINDOW_METHODS:
            model, examples, window = _window_setup()
            method = build_method(name, Budget(0.5, 0.5), {"random": {"mode": "batch"}}, seed=0)
            counters, sink = Counters(), io.StringIO()

            ctx = StepContext(model, method, examples, 0, torch.device("cpu"), counters, stats_chunk=4, trace=sink)
            loss = train_window(ctx, window, 0, {})
            qd.all_reduce_gradients(model.parameters())
            results[name] = {"loss": loss, "counters": counters.as_dict(), "trace": sink.getvalue(),
                             "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
        torch.save(results, os.path.join(out_dir, f"window{world}-rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_one_window_gradient_on_two_processes_equals_one(tmp_path):
    """After one window (two 7- and 6-row micro-batches, each rank half of each)
    and the gradient all-reduce, both ranks hold exactly the gradient, loss,
    counters and trace of one process on the whole window: the loss is divided
    by the global kept-token count, not each rank's (float64, so a wrong scale
    or a missing reduction cannot hide in rounding)."""
    _window_worker(0, 1, 0, str(tmp_path))
    mp.spawn(_window_worker, args=(2, launch.free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "window1-rank0.pt", weights_only=True)
    for rank in range(2):
        two = torch.load(tmp_path / f"window2-rank{rank}.pt", weights_only=True)
        for name in WINDOW_METHODS:
            a, b = one[name], two[name]
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-10), name
            floats = ("loss_sum", "last_loss", "wall_time_s")
            assert {k: v for k, v in b["counters"].items() if k not in floats} == \
                {k: v for k, v in a["counters"].items() if k not in floats}, name
            rows_a = [json.loads(r) for r in a["trace"].splitlines()]
            rows_b = [json.loads(r) for r in b["trace"].splitlines()]
            assert_close(rows_a, rows_b, name)
            assert any(g.abs().max() > 0 for g in a["grads"].values()), name
            for param, grad in a["grads"].items():
                torch.testing.assert_close(b["grads"][param], grad, rtol=1e-9, atol=1e-12, msg=f"{name} {param}")


@pytest.mark.slow
def test_qtbench_train_cli_under_torchrun_equals_one_process(tmp_path):
    """The command the train rule runs with ``--gpus 2 --distributed``
    (``launch_command``: torchrun, 2 CPU processes over gloo) trains like one
    process: the same trace decisions and counts, and one summary saying 2
    processes."""
    data, base = _tiny_world(tmp_path)
    cfg = next(c for c in _train_configs(data, base) if c["run"]["method"] == "q_tuning")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                     "MASTER_"))}
    env.update(QTBENCH_NO_PROGRESS="1", WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(Path(launch.__file__).resolve().parents[1]))
    outs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        command = [sys.executable, "-m", "qtbench.cli", "train", "--run-config", json.dumps(cfg), "--base-model", str(base),
                   "--data", str(data), "--out", str(out / "checkpoint"), "--state-dir", str(out / "state"), "--no-progress"]
        done = subprocess.run(launch.launch_command(command, processes), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[processes] = out / "checkpoint"
        summary = json.loads(done.stdout[done.stdout.index("{"):])  # printed once, by rank 0
        assert summary["processes"] == processes
    rows = [[json.loads(line) for line in (outs[p] / "trace.jsonl").read_text().splitlines()] for p in (1, 2)]
    assert len(rows[0]) == len(rows[1]) > 0
    assert_close(rows[0], rows[1], "q_tuning")
    assert not (tmp_path / "p2" / "state").exists()  # rank 0 cleared the state after writing the model


# --------------------------------------------------------------------------- FSDP

FSDP_METHODS = ["q_tuning", "random+random", "full"]


def _fsdp_worker(rank: int, world: int, port: int, root: str, data: str, base: str, configs: list[dict],
                 crash_after: int) -> None:
    """Train each config; with ``crash_after`` > 0 every rank dies before that
    window (after a checkpoint) and the same call resumes from the checkpoint."""
    import torch.distributed as dist

    import qtbench.train.loop as train_mod

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "QTBENCH_NO_PROGRESS": "1"})
    original = train_mod.train_window
    try:
        for cfg in configs:
            out = Path(root) / f"fsdp{world}" / cfg["run"]["run_id"]
            if crash_after:
                calls = {"n": 0}

                def crashing(*args, **kwargs):
                    calls["n"] += 1
                    if calls["n"] > crash_after:
                        raise KeyboardInterrupt  # not an Exception: nothing in train() swallows it
                    return original(*args, **kwargs)

                train_mod.train_window = crashing
                try:
                    train_mod.train(cfg, out / "checkpoint", base, data, state_dir=out / "state", progress=False)
                except KeyboardInterrupt:
                    pass
                train_mod.train_window = original
                assert (out / "state" / "checkpoint").is_dir()
            train_mod.train(cfg, out / "checkpoint", base, data, state_dir=out / "state", progress=False)
    finally:
        train_mod.train_window = original
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_on_two_processes_trains_like_one_and_resumes(tmp_path):
    """``train.fsdp: true`` on 2 processes (gloo): each rank holds half of every
    weight, gradient and AdamW state; the run makes one process's decisions
    and ends with its weights (up to float rounding), through a crash after a
    checkpoint and a resume (full state dicts gathered and scattered back); a
    7-row micro-batch leaves ranks with nothing to train (dummy forwards).
    The same for a LoRA model (the saved model has the adapters merged)."""
    from safetensors.torch import load_file

    data, base = _tiny_world(tmp_path)
    configs = [c for c in _train_configs(data, base) if c["run"]["method"] in FSDP_METHODS]
    lora = copy.deepcopy(configs[0])  # FSDP over a LoRA model: frozen and trainable weights in one unit
    lora["run"]["run_id"] += "-lora"
    lora["train"]["lora"] = {"rank": 4, "alpha": 8, "dropout": 0.0, "target": "all-linear"}
    lora["train"]["save_merged"] = True  # compare whole models (unsharded LoRA runs save the adapter by default)
    configs.append(lora)
    for cfg in configs:
        cfg["train"].update(fsdp=True, checkpoint_every=2)
    _train_worker(0, 1, 0, str(tmp_path), str(data), str(base), configs)  # one process: fsdp is a no-op
    mp.spawn(_fsdp_worker, args=(2, launch.free_port(), str(tmp_path), str(data), str(base), configs, 5), nprocs=2,
             join=True)
    base_weights = load_file(str(base / "model.safetensors"))
    for cfg in configs:
        run_id = cfg["run"]["run_id"]
        one, two = tmp_path / "world1" / run_id / "checkpoint", tmp_path / "fsdp2" / run_id / "checkpoint"
        rows = [[json.loads(line) for line in (d / "trace.jsonl").read_text().splitlines()] for d in (one, two)]
        assert len(rows[0]) == len(rows[1]) > 0, run_id
        assert_close(rows[0], rows[1], run_id)
        summaries = [json.loads((d / "train_summary.json").read_text()) for d in (one, two)]
        assert (summaries[0]["processes"], summaries[0]["fsdp"]) == (1, False)
        assert (summaries[1]["processes"], summaries[1]["fsdp"]) == (2, True)  # really sharded
        assert summaries[0]["samples_trained"] == summaries[1]["samples_trained"]
        weights = [load_file(str(d / "model.safetensors")) for d in (one, two)]
        assert weights[0].keys() == weights[1].keys()
        moved = {name: float((t - base_weights[name]).abs().max()) for name, t in weights[0].items()}
        assert sum(m > 1e-3 for m in moved.values()) >= len(moved) // 2, run_id  # it trained (LoRA: not the embeddings)
        for name, tensor in weights[0].items():  # a frozen weight (moved 0) must come back exactly
            assert float((tensor - weights[1][name]).abs().max()) <= 1e-2 * moved[name], (run_id, name)
