"""Evaluate a checkpoint with lm-evaluation-harness and write one results JSON.

The model is built once per job (an lm-eval ``LM`` instance: HFLM or vLLM) and
``lm_eval.simple_evaluate`` is called on it once per (shot count, generation
limit) group, since lm-eval applies ``num_fewshot`` and ``gen_kwargs`` to every
task of a call.  The record written is immutable and complete: the scores per
task and metric, lm-eval's task configs, versions and n-shot, the harness
versions, the evaluation settings and seeds, and the model it scored.  Beside
it, ``<stem>.items.jsonl`` holds one line per (task, document, filter) with the
document's numeric metric values (paired tests and bootstraps over items).

A cut-off evaluation resumes: lm-eval's request cache (``use_cache``, an SQLite
file committed after every answered request) lives in ``<stem>.cache/`` beside
the record, keyed by a fingerprint of the model files and the settings, so a
requeued job re-answers only what it had not answered; the folder is removed
once the record is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

import qtbench
from qtbench.io import write_json_atomic
from qtbench.items import items_from_samples, items_path, write_items
from qtbench.models import check_model_path, resolve_device, trust_remote_code

log = logging.getLogger(__name__)

#: ``include: lm_eval:<path>`` in a task YAML of ``eval.include_path`` names a
#: file of lm-eval's own task folder (``lm_eval/tasks/<path>``), so a small
#: override can reuse a built-in task's prompt, metrics and version and change
#: only its data source (config/lm_eval_local/).  lm-eval itself resolves
#: ``include`` relative to the YAML's folder only; qtbench rewrites these lines
#: to absolute paths in a private copy of the folder before lm-eval reads it.
LM_EVAL_INCLUDE = re.compile(r"""^(?P<head>\s*include:\s*)(?P<q>["']?)lm_eval:(?P<path>[^"'\s#]+)(?P=q)(?P<tail>\s*(?:#.*)?)$""",
                             re.MULTILINE)


class TaskNotFound(ValueError):
    pass


# --------------------------------------------------------------------------- tasks


def lm_eval_tasks_dir() -> Path:
    """lm-eval's built-in task folder (``lm_eval/tasks``), found without
    importing lm-eval (seconds; the Snakefile asks at every DAG build)."""
    from importlib.util import find_spec

    spec = find_spec("lm_eval")
    if spec is None or not spec.origin:
        raise TaskNotFound("lm-eval is not installed (pip install 'lm-eval[hf]')")
    return Path(spec.origin).resolve().parent / "tasks"


def needs_materializing(include_path: str | Path) -> bool:
    """True when a YAML of the folder has an ``include: lm_eval:...`` line."""
    return any(LM_EVAL_INCLUDE.search(p.read_text(encoding="utf-8")) for p in Path(include_path).rglob("*.yaml"))


def materialize_tasks(include_path: str | Path, dest: str | Path) -> Path:
    """A copy of ``include_path`` in ``dest`` whose ``include: lm_eval:<path>``
    lines name lm-eval's own files by absolute path (an unknown file is an error
    naming the YAML).  Data paths are left as written: lm-eval reads them
    relative to the working directory."""
    src, dest = Path(include_path), Path(dest)
    builtin = lm_eval_tasks_dir()
    shutil.copytree(src, dest, dirs_exist_ok=True)
    for path in dest.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")

        def resolve(match: re.Match, _path: Path = path) -> str:
            target = builtin / match.group("path")
            if not target.is_file():
                raise TaskNotFound(f"{src / _path.relative_to(dest)}: include lm_eval:{match.group('path')} is not a "
                                   f"file of lm-eval's task folder {builtin}")
            return f"{match.group('head')}{json.dumps(str(target))}{match.group('tail')}"

        new = LM_EVAL_INCLUDE.sub(resolve, text)
        if new != text:
            path.write_text(new, encoding="utf-8")
    return dest


@contextmanager
def usable_include_path(include_path: str | Path | None) -> Iterator[Path | None]:
    """``include_path`` as lm-eval can read it: the folder itself, or (with
    ``lm_eval:`` includes) a materialized copy that lives as long as the block."""
    if include_path is None:
        yield None
        return
    if not Path(include_path).is_dir():
        raise TaskNotFound(f"eval.include_path {include_path} is not a folder")
    if not needs_materializing(include_path):
        yield Path(include_path)
        return
    with tempfile.TemporaryDirectory(prefix="qtbench-tasks-") as tmp:
        yield materialize_tasks(include_path, Path(tmp) / "tasks")


def _cache_dir() -> Path:
    root = os.environ.get("QTBENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qtbench"
    return Path(root)


def _builtin_cache_path() -> Path:
    version = _version("lm_eval")
    folder = lm_eval_tasks_dir()
    key = hashlib.sha256(f"{version}\0{folder}\0{folder.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    return _cache_dir() / f"lm_eval_tasks-{version}-{key}.json"


def builtin_task_names() -> frozenset[str]:
    """Every name lm-eval's built-in task index knows (tasks, groups, tags).

    Indexing the ~14k built-in YAMLs costs seconds, so the names are computed
    once per lm-eval installation and kept in ``$QTBENCH_CACHE`` (default
    ``~/.cache/qtbench``); the Snakefile checks task names at every DAG build."""
    from qtbench.io import read_json

    version = _version("lm_eval")
    folder = lm_eval_tasks_dir()
    cache = _builtin_cache_path()
    try:
        return frozenset(read_json(cache)["names"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager(include_defaults=True).all_tasks)
    try:
        write_json_atomic(cache, {"lm_eval": version, "folder": str(folder), "names": names})
    except OSError as exc:  # a read-only home: index again next time
        log.warning("cannot cache lm-eval's task names at %s (%s)", cache, exc)
    return frozenset(names)


#: A top-level ``task:``, ``group:`` or ``tag:`` line of a task YAML with one name.
_NAME_LINE = re.compile(r"""^(?:task|group|tag):[ \t]*["']?([A-Za-z0-9_.\-]+)["']?[ \t]*(?:#.*)?$""", re.MULTILINE)


def declared_builtin_names() -> frozenset[str]:
    """Names declared on a ``task:``/``group:``/``tag:`` line of lm-eval's
    built-in YAMLs: a text scan (about a second), not lm-eval's index (which
    parses every YAML).  A name found here is a task lm-eval has; one not found
    may still be (a tag list, a generated config): :func:`check_task_names`
    then asks the exact index."""
    found: set[str] = set()
    for path in lm_eval_tasks_dir().rglob("*.yaml"):
        try:
            found.update(_NAME_LINE.findall(path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return frozenset(found)


def _cached_builtin_names() -> frozenset[str] | None:
    """The exact index's names when :func:`builtin_task_names` has cached them."""
    from qtbench.io import read_json

    try:
        return frozenset(read_json(_builtin_cache_path())["names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def local_task_names(include_path: str | Path) -> frozenset[str]:
    """The task names an include folder defines (indexing it alone is fast)."""
    from lm_eval.tasks import TaskManager

    with usable_include_path(include_path) as folder:
        return frozenset(TaskManager(include_path=str(folder), include_defaults=False).all_tasks)


def check_task_names(names: list[str], include_path: str | Path | None, skip_prefix: str | None = None) -> None:
    """Raise :class:`TaskNotFound` naming every task lm-eval would not find
    (with near misses), before any job runs.  Names starting with
    ``skip_prefix`` are left alone (the world's tasks, built by a rule)."""
    import difflib

    wanted = [n for n in names if not (skip_prefix and n.startswith(skip_prefix))]
    if not wanted:
        return
    known = local_task_names(include_path) if include_path else frozenset()
    if any(n not in known for n in wanted):  # the exact index when cached, else a text scan first
        known = known | (_cached_builtin_names() or declared_builtin_names())
    if any(n not in known for n in wanted):
        known = known | builtin_task_names()
    missing = [n for n in wanted if n not in known]
    if missing:
        hints = {n: difflib.get_close_matches(n, known, n=3, cutoff=0.75) for n in missing}
        said = "; ".join(f"{n!r}" + (f" (did you mean {', '.join(hints[n])}?)" if hints[n] else "") for n in missing)
        raise TaskNotFound(f"config key 'eval.tasks': lm-eval has no task {said}"
                           + (f" (built-in tasks and include_path={include_path})" if include_path else " (built-in tasks)"))


def task_manager(include_path: str | Path | None, names: list[str]) -> Any:
    """A TaskManager that indexes built-in tasks only when a task is not found in
    ``include_path`` (indexing ~14k built-in tasks costs seconds)."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=str(include_path), include_defaults=False) if include_path else None
    manager = local if local is not None and all(n in local.all_tasks for n in names) else TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=True)
    missing = [name for name in names if name not in manager.all_tasks]
    if missing:
        raise TaskNotFound(
            f"lm-eval task(s) {missing} not found"
            + (f" (include_path={include_path})" if include_path else "")
            + "; check the names in the config's eval.tasks"
        )
    return manager


# --------------------------------------------------------------------------- the model


def model_arguments(model_path: str, eval_cfg: Mapping[str, Any], entry: Mapping[str, Any],
                    device: torch.device) -> dict[str, Any]:
    """lm-eval's ``model_args`` for the backend (HF or vLLM).  A LoRA run's
    adapter folder is evaluated as its base model plus the adapter (``peft`` /
    vLLM's ``lora_local_path``), with the tokenizer saved beside the adapter."""
    from qtbench.adapters import base_of, is_adapter_folder

    backend = eval_cfg.get("backend", "hf")
    adapter = is_adapter_folder(model_path)
    base, base_revision = base_of(model_path) if adapter else (str(model_path), None)
    model_args: dict[str, Any] = {
        "pretrained": base,
        "trust_remote_code": trust_remote_code(entry),
        "dtype": "float32" if device.type == "cpu" else ("bfloat16" if entry.get("dtype", "auto") == "auto" else entry["dtype"]),
    }
    if backend == "hf":
        model_args["add_bos_token"] = True
        model_args["use_safetensors"] = True  # never unpickle *.bin weights
    else:
        model_args["load_format"] = "safetensors"
    revision = base_revision if adapter else entry.get("revision")
    if revision and not Path(base).exists():
        model_args["revision"] = revision
    if adapter and backend == "hf":
        model_args["peft"] = str(model_path)
        model_args["tokenizer"] = str(model_path)
    elif adapter:
        model_args["lora_local_path"] = str(model_path)
    if eval_cfg.get("max_length"):
        model_args["max_length"] = int(eval_cfg["max_length"])
    return model_args


def build_lm(model_path: str, eval_cfg: Mapping[str, Any], entry: Mapping[str, Any], device: torch.device) -> Any:
    """The lm-eval model, built once per job and reused for every task group
    (as ``simple_evaluate`` itself would build it from ``model_args``)."""
    from lm_eval.api.registry import get_model

    backend = eval_cfg.get("backend", "hf")
    return get_model("vllm" if backend == "vllm" else "hf").create_from_arg_obj(
        model_arguments(model_path, eval_cfg, entry, device),
        {"batch_size": eval_cfg.get("batch_size", 16), "max_batch_size": None,
         "device": str(device) if backend == "hf" else None},
    )


def task_groups(eval_cfg: Mapping[str, Any]) -> list[tuple[tuple[int, int | None], list[str]]]:
    """Tasks grouped by (num_fewshot, max_gen_toks), which lm-eval applies per call."""
    by_shots: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for task in eval_cfg["tasks"]:
        limit = task.get("max_gen_toks") or eval_cfg.get("max_gen_toks")
        by_shots[(int(task.get("num_fewshot", 0)), int(limit) if limit else None)].append(task["name"])
    return sorted(by_shots.items(), key=lambda item: (item[0][0], item[0][1] or 0))


def model_fingerprint(model_path: str | Path) -> str:
    """Names, sizes and modification times of a local model folder's files (a
    retrained checkpoint differs), or the id itself for a hub model."""
    path = Path(model_path)
    if not path.is_dir():
        return str(model_path)
    parts = [f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.rglob("*")) if p.is_file()]
    return "\n".join([str(path.resolve()), *parts])


def cache_folder(out_path: str | Path) -> Path:
    """Where a cut-off evaluation's answers wait for the requeued job: ``<stem>.cache/``."""
    out = Path(out_path)
    return out.with_name(out.name.removesuffix(".json") + ".cache")


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model_path: str,
    eval_cfg: Mapping[str, Any],
    out_path: str | Path,
    *,
    tasks_dir: str | Path | None = None,
    model_entry: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``model_path`` on the configured tasks; write the record and its
    per-item file, and return the record."""
    entry = dict(model_entry or {})
    check_model_path(model_path)
    device = resolve_device(eval_cfg.get("device", "auto"))
    if device.type == "cpu":
        torch.set_num_threads(int(eval_cfg.get("threads", 1)))
    names = [t["name"] for t in eval_cfg["tasks"]]
    with usable_include_path(tasks_dir) as include:
        manager = task_manager(include, names)
        try:
            return _evaluate(model_path, eval_cfg, out_path, manager, entry, device, meta)
        except BaseException:
            drop_empty_cache(cache_folder(out_path))  # keep only answers worth resuming from
            raise


def drop_empty_cache(folder: Path) -> None:
    """Remove a request-cache folder whose databases hold no answer (the job
    failed before the model answered anything: a wrong task, missing data)."""
    import sqlite3

    if not folder.is_dir():
        return
    for db in folder.rglob("*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                if any(con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables):
                    return
        except sqlite3.Error:
            return  # unreadable: leave it to the next run's fingerprint check
    shutil.rmtree(folder, ignore_errors=True)


def _evaluate(model_path, eval_cfg, out_path, manager, entry, device, meta) -> dict[str, Any]:
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    chat = bool(entry.get("chat_template", False))
    seed = int(eval_cfg.get("seed", 1234))
    cache = cache_folder(out_path)
    settings = {k: v for k, v in eval_cfg.items() if k not in ("threads", "evaluate_base")}
    key = hashlib.sha256(json.dumps([model_fingerprint(model_path), settings, entry], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    if cache.exists() and not (cache / key).exists():
        shutil.rmtree(cache, ignore_errors=True)  # answers of another model or other settings
    started = time.time()
    lm = build_lm(model_path, eval_cfg, entry, device)
    merged: dict[str, Any] = {"results": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {},
                              "configs": {}}
    items: list[dict[str, Any]] = []
    for (shots, max_gen_toks), group in task_groups(eval_cfg):
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=group,
            num_fewshot=shots,
            batch_size=eval_cfg.get("batch_size", 16),
            limit=eval_cfg.get("limit"),
            bootstrap_iters=int(eval_cfg.get("bootstrap_iters", 0)),
            task_manager=manager,
            log_samples=True,
            use_cache=str(cache / key / f"shots{shots}-gen{max_gen_toks or 'task'}"),
            apply_chat_template=chat,
            fewshot_as_multiturn=chat and shots > 0,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        if out is None:  # non-zero rank under accelerate
            return {}
        for part in merged:
            merged[part].update(out.get(part, {}))
        items += items_from_samples(out.get("samples", {}), bool(eval_cfg.get("log_generations", False)))
    record = {
        "model_path": str(model_path),
        "meta": dict(meta or {}),
        "scores": clean_scores(merged["results"]),
        "lm_eval": merged,
        "eval_config": dict(eval_cfg),
        "chat_template": chat,
        "adapter": _adapter_of(model_path),
        "items_file": items_path(out_path).name,
        "versions": {"qtbench": qtbench.__version__, "lm_eval": _version("lm_eval"),
                     "transformers": _version("transformers"), "torch": torch.__version__},
        "device": str(device),
        "wall_time_s": time.time() - started,
    }
    items.sort(key=lambda item: (item["task"], item["filter"], item["doc_id"]))
    write_items(items_path(out_path), items)  # the items first: a record on disk always has its items beside it
    write_json_atomic(out_path, record, default=handle_non_serializable)
    shutil.rmtree(cache, ignore_errors=True)
    return record


def _adapter_of(model_path: str) -> dict[str, Any] | None:
    """The base model and revision of a LoRA adapter folder, else None."""
    from qtbench.adapters import base_of, is_adapter_folder

    if not is_adapter_folder(model_path):
        return None
    base, revision = base_of(model_path)
    return {"base_model": base, "revision": revision}


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
