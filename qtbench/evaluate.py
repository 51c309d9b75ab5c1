"""Evaluate a checkpoint with lm-evaluation-harness and write one results JSON.

``lm_eval.simple_evaluate`` is called from Python (the CLI writes time-stamped
file names) once per shot count, since lm-eval applies ``num_fewshot`` to every
task of a call.  The record written is immutable and complete: the scores per
task and metric, lm-eval's task versions and n-shot, the harness versions, the
evaluation settings and seeds, and the model it scored.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch

import qtbench
from qtbench.io import write_json_atomic
from qtbench.models import check_model_path, resolve_device, trust_remote_code

log = logging.getLogger(__name__)


class TaskNotFound(ValueError):
    pass


def task_manager(include_path: str | Path | None, names: list[str]) -> Any:
    """A TaskManager that indexes built-in tasks only when a non-local task is asked for
    (indexing ~14k built-in tasks costs seconds)."""
    from lm_eval.tasks import TaskManager

    local_only = include_path is not None and all(name.startswith("world_") for name in names)
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=not local_only)
    missing = [name for name in names if name not in manager.all_tasks]
    if missing:
        raise TaskNotFound(
            f"lm-eval task(s) {missing} not found"
            + (f" (include_path={include_path})" if include_path else "")
            + "; check the names in the config's eval.tasks"
        )
    return manager


def evaluate(
    model_path: str,
    eval_cfg: Mapping[str, Any],
    out_path: str | Path,
    *,
    tasks_dir: str | Path | None = None,
    model_entry: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``model_path`` on the configured tasks; write and return the record."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    entry = dict(model_entry or {})
    check_model_path(model_path)
    device = resolve_device(eval_cfg.get("device", "auto"))
    if device.type == "cpu":
        torch.set_num_threads(int(eval_cfg.get("threads", 1)))
    tasks = list(eval_cfg["tasks"])
    names = [t["name"] for t in tasks]
    manager = task_manager(tasks_dir, names)
    backend = eval_cfg.get("backend", "hf")
    model_args: dict[str, Any] = {
        "pretrained": str(model_path),
        "trust_remote_code": trust_remote_code(entry),
        "dtype": "float32" if device.type == "cpu" else ("bfloat16" if entry.get("dtype", "auto") == "auto" else entry["dtype"]),
    }
    if backend == "hf":
        model_args["add_bos_token"] = True
        model_args["use_safetensors"] = True  # never unpickle *.bin weights
    else:
        model_args["load_format"] = "safetensors"
    if entry.get("revision") and not Path(model_path).exists():
        model_args["revision"] = entry["revision"]
    if eval_cfg.get("max_length"):
        model_args["max_length"] = int(eval_cfg["max_length"])
    # one lm-eval call per (shots, max_gen_toks): both apply to every task of a call
    by_shots: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for task in tasks:
        limit = task.get("max_gen_toks") or eval_cfg.get("max_gen_toks")
        by_shots[(int(task.get("num_fewshot", 0)), int(limit) if limit else None)].append(task["name"])
    started = time.time()
    merged: dict[str, Any] = {"results": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
    for (shots, max_gen_toks), group in sorted(by_shots.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        out = lm_eval.simple_evaluate(
            model="vllm" if backend == "vllm" else "hf",
            model_args=model_args,
            tasks=group,
            num_fewshot=shots,
            batch_size=eval_cfg.get("batch_size", 16),
            device=str(device) if backend == "hf" else None,
            limit=eval_cfg.get("limit"),
            bootstrap_iters=int(eval_cfg.get("bootstrap_iters", 0)),
            task_manager=manager,
            log_samples=False,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            random_seed=int(eval_cfg.get("seed", 1234)),
            numpy_random_seed=int(eval_cfg.get("seed", 1234)),
            torch_random_seed=int(eval_cfg.get("seed", 1234)),
            fewshot_random_seed=int(eval_cfg.get("seed", 1234)),
        )
        if out is None:  # non-zero rank under accelerate
            return {}
        for key in merged:
            merged[key].update(out.get(key, {}))
    record = {
        "model_path": str(model_path),
        "meta": dict(meta or {}),
        "scores": clean_scores(merged["results"]),
        "lm_eval": merged,
        "eval_config": dict(eval_cfg),
        "versions": {"qtbench": qtbench.__version__, "lm_eval": _version("lm_eval"),
                     "transformers": _version("transformers"), "torch": torch.__version__},
        "device": str(device),
        "wall_time_s": time.time() - started,
    }
    write_json_atomic(out_path, record, default=handle_non_serializable)
    return record


def clean_scores(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{task: {metric,filter: {"value": v, "stderr": s}}}`` from lm-eval's results."""
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "_stderr" in key or key == "alias" or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            scores.setdefault(task, {})[key] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            }
    return scores


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def offline_environment() -> None:
    """No hub access during evaluation of local models (CI has no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
