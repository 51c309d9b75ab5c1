"""The GPU check's Python half (benchmarks/gpu_check.sh runs it): every
registered method trains a few steps on the tiny world model, in one process,
then one checkpoint is evaluated with lm-eval.  Prints a table and writes
``summary.json``; exits 1 when any step failed.

    python benchmarks/gpu_check.py --world W --base B --out O [--steps 3] [--device cuda|cpu]

On CUDA the model trains in bf16 (``dtype: auto``) and lm-eval runs with
``batch_size: auto``; every run config is built by qtbench.config from a
config dict, exactly as the Snakefile builds them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path


def method_list() -> list[str]:
    """Every registered method once: full, each joint method, each sample
    pruner alone, each token pruner alone, and one pair."""
    from qtbench.methods.registry import registered_names

    names = registered_names()
    return ["full", *names["joint"], *names["sample"], *[f"none+{t}" for t in names["token"]], "entropy+ppl"]


def build_config(args: argparse.Namespace, methods: list[str]) -> dict:
    from qtbench.config import validate_config

    device = args.device
    return validate_config({
        "experiment": "gpu_check",
        "models": {"tiny": {"path": str(args.base), "dtype": "auto"}},
        "data": {"source": str(Path(args.world) / "sft.jsonl")},
        "train": {"epochs": 1, "micro_batch_size": 8, "grad_accum": 2, "lr": 1.0e-3, "warmup_ratio": 0.0,
                  "max_length": 256, "max_steps": args.steps, "threads": args.threads, "checkpoint_every": 0,
                  "log_every": 1},
        "methods": methods,
        "budgets": [{"r_s": 0.5, "r_t": 0.5}],
        "seeds": [0],
        "method_options": {"random": {"mode": "batch"}},
        "eval": {
            "tasks": [{"name": "world_arc_easy", "num_fewshot": 0}, {"name": "world_arc_challenge", "num_fewshot": 0},
                      {"name": "world_gsm8k", "num_fewshot": 0},
                      {"name": "world_squad", "num_fewshot": 0, "metric": "f1,none"},
                      {"name": "world_triviaqa", "num_fewshot": 0}],
            "limit": args.eval_limit, "batch_size": "auto" if device == "cuda" else 8, "max_length": 512,
            "max_gen_toks": 16, "bootstrap_iters": 0, "device": device, "threads": args.threads,
        },
        "wandb": {"mode": "disabled"},
    })


def weights_dtype(folder: Path) -> str:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    with safe_open(str(files[0]), framework="pt") as handle:
        return str(handle.get_tensor(next(iter(handle.keys()))).dtype).replace("torch.", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eval-limit", type=int, default=16)
    parser.add_argument("--threads", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--processes", type=int, default=1,
                        help="N > 1: also train q_tuning with N processes (GPUs), data-parallel and FSDP, and "
                             "compare its decisions with the one-process run")
    args = parser.parse_args(argv)

    import torch

    from qtbench import config as qconfig
    from qtbench.methods.base import Budget
    from qtbench.methods.registry import SAMPLE_PRUNERS, build_method, parse_method
    from qtbench.methods.static import score_static
    from qtbench.train.loop import train

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (set QTBENCH_GPU_CHECK_DEVICE=cpu to check the script on CPU)")
        return 2
    expected_dtype = "bfloat16" if args.device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    methods = args.methods or method_list()
    cfg = build_config(args, methods)
    runs = qconfig.expand_runs(cfg)
    data = cfg["data"]["source"]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    static_cache: dict[str, Path] = {}
    for run in runs:
        started = time.time()
        row = {"method": run.method, "budget": run.budget, "status": "ok"}
        try:
            spec = parse_method(run.method)
            extra = {}
            if spec.sample in SAMPLE_PRUNERS and SAMPLE_PRUNERS[spec.sample].static:
                if spec.sample not in static_cache:
                    path = args.out / "static" / f"{spec.sample}.json"
                    score_static(spec.sample, str(args.base), data, cfg["method_options"].get(spec.sample, {}), path,
                                 model_entry={"name": "tiny", **cfg["models"]["tiny"]}, data_cfg=cfg["data"])
                    static_cache[spec.sample] = path
                extra["static_scores"] = static_cache[spec.sample]
            method = build_method(run.method, Budget(float(run.r_s), float(run.r_t)), cfg["method_options"], run.seed)
            if "ref_nll" in method.required_stats:
                extra["reference_model"] = str(args.base)  # the check only needs *a* reference model
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            out = args.out / "runs" / run.run_id
            summary = train(qconfig.train_config(cfg, run), out / "checkpoint", str(args.base), data,
                            state_dir=out / "state", progress=False, **extra)
            dtype = weights_dtype(out / "checkpoint")
            row.update(steps=summary["optimizer_steps"], samples=summary["samples_trained"],
                       loss_tokens=summary["loss_tokens"], loss=summary["mean_loss"], dtype=dtype,
                       peak_mb=round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None)
            problems = []
            if summary["optimizer_steps"] < 1 or summary["loss_tokens"] < 1:
                problems.append("nothing trained")
            if not math.isfinite(summary["mean_loss"]):
                problems.append(f"loss {summary['mean_loss']}")
            if dtype != expected_dtype:
                problems.append(f"weights in {dtype}, expected {expected_dtype}")
            if problems:
                row["status"] = "FAIL: " + "; ".join(problems)
        except Exception as exc:  # noqa: BLE001 - report every method, then fail
            row["status"] = f"FAIL: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        if row["status"] != "ok":
            failures.append(run.method)
        print(json.dumps(row), flush=True)

    # lm-eval on one checkpoint (Q-Tuning's when it trained), batch_size auto on CUDA
    evaluation = {"status": "skipped"}
    trained = [r for r in rows if r["status"] == "ok"]
    if trained:
        from qtbench.evaluate import evaluate, offline_environment

        offline_environment()
        pick = next((r for r in trained if r["method"] == "q_tuning"), trained[0])
        run = next(r for r in runs if r.method == pick["method"])
        started = time.time()
        try:
            record = evaluate(str(args.out / "runs" / run.run_id / "checkpoint"), cfg["eval"],
                              args.out / "eval.json", tasks_dir=Path(args.world) / "tasks",
                              model_entry={"name": "tiny", **cfg["models"]["tiny"]}, meta=run.as_dict())
            scores = {task: {k: round(v["value"], 4) for k, v in metrics.items()} for task, metrics in record["scores"].items()}
            missing = [t["name"] for t in cfg["eval"]["tasks"] if t["name"] not in scores]
            evaluation = {"status": "ok" if not missing else f"FAIL: no scores for {missing}", "run": run.run_id,
                          "batch_size": cfg["eval"]["batch_size"], "device": record["device"], "scores": scores}
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            evaluation = {"status": f"FAIL: {type(exc).__name__}: {exc}"}
        evaluation["seconds"] = round(time.time() - started, 1)
        if evaluation["status"] != "ok":
            failures.append("evaluate")

    if args.processes > 1 and any(r["method"] == "q_tuning" and r["status"] == "ok" for r in rows):
        run = next(r for r in runs if r.method == "q_tuning")
        for fsdp in (False, True):
            row = several_processes(args, qconfig.train_config(cfg, run), run.run_id, fsdp)
            rows.append(row)
            if row["status"] != "ok":
                failures.append(row["method"])
            print(json.dumps(row), flush=True)

    report = {"device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "expected_dtype": expected_dtype, "methods": rows, "evaluation": evaluation, "failures": failures}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, evaluation, report)
    return 1 if failures else 0


def several_processes(args: argparse.Namespace, run_config: dict, run_id: str, fsdp: bool) -> dict:
    """Train ``run_config`` (Q-Tuning) with ``args.processes`` processes - on
    GPUs through the train rule's launcher (``qtbench.launch launch
    --gpus N --distributed``), on CPU under torchrun - and compare every
    per-sample keep decision with the one-process run's trace.  On CPU they
    must all agree; in bf16 on GPUs a decision on a near tie may flip (each
    rank's kernels see other shapes), so 90% agreement is asked for."""
    import subprocess

    from qtbench.launch import launch_command

    started = time.time()
    name = f"q_tuning x{args.processes}" + (" fsdp" if fsdp else "")
    row = {"method": name, "budget": run_config["run"]["budget"], "status": "ok"}
    out = args.out / "several" / ("fsdp" if fsdp else "ddp")
    config = json.loads(json.dumps(run_config))
    config["train"]["fsdp"] = fsdp
    command = [sys.executable, "-m", "qtbench.cli", "train", "--run-config", json.dumps(config),
               "--base-model", str(args.base), "--data", str(Path(args.world) / "sft.jsonl"),
               "--out", str(out / "checkpoint"), "--state-dir", str(out / "state"), "--no-progress"]
    if args.device == "cuda":
        command = [sys.executable, "-m", "qtbench.launch", "launch", "--gpus", str(args.processes),
                   "--distributed", "--", *command]
    else:
        command = launch_command(command, args.processes)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        row["status"] = f"FAIL: exit {done.returncode}"
    else:
        def decisions(folder: Path) -> list:
            rows = [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]
            return [(i, k) for r in rows for i, k in zip(r["samples"]["id"], r["samples"]["kept"])]

        one = decisions(args.out / "runs" / run_id / "checkpoint")
        many = decisions(out / "checkpoint")
        same = sum(a == b for a, b in zip(one, many)) / max(1, len(one))
        summary = json.loads((out / "checkpoint" / "train_summary.json").read_text())
        row.update(steps=summary["optimizer_steps"], samples=summary["samples_trained"],
                   loss_tokens=summary["loss_tokens"], loss=summary["mean_loss"], dtype=weights_dtype(out / "checkpoint"),
                   agreement=round(same, 4))
        needed = 1.0 if args.device == "cpu" else 0.9
        if len(one) != len(many) or summary["processes"] != args.processes or same < needed:
            row["status"] = (f"FAIL: {len(many)} decisions vs {len(one)}, {summary['processes']} processes, "
                             f"{same:.1%} agree with one process (need {needed:.0%})")
    row["seconds"] = round(time.time() - started, 1)
    return row


def print_table(rows: list[dict], evaluation: dict, report: dict) -> None:
    print()
    print(f"device {report['device']} ({report['gpu'] or 'no GPU'}), torch {report['torch']}, "
          f"expected weights dtype {report['expected_dtype']}")
    header = f"{'method':<24} {'budget':<12} {'steps':>5} {'samples':>7} {'tokens':>7} {'loss':>7} {'dtype':<9} {'peak MB':>7} {'s':>6}  status"
    print(header)
    print("-" * len(header))
    for r in rows:
        loss = f"{r['loss']:.3f}" if isinstance(r.get("loss"), float) else "-"
        print(f"{r['method']:<24} {r['budget']:<12} {r.get('steps', '-')!s:>5} {r.get('samples', '-')!s:>7} "
              f"{r.get('loss_tokens', '-')!s:>7} {loss:>7} {r.get('dtype', '-')!s:<9} {r.get('peak_mb') or '-'!s:>7} "
              f"{r['seconds']:>6}  {r['status']}")
    print()
    print(f"lm-eval ({evaluation.get('run', '-')}, batch_size={evaluation.get('batch_size', '-')}): "
          f"{evaluation['status']} in {evaluation.get('seconds', 0)} s")
    for task, metrics in (evaluation.get("scores") or {}).items():
        print(f"  {task}: {metrics}")
    failed = report["failures"]
    print()
    print("gpu_check: OK" if not failed else f"gpu_check: FAILED: {', '.join(failed)}")


if __name__ == "__main__":
    sys.exit(main())
