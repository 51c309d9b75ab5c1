"""Checks that run when the Snakefile builds its DAG (and in ``qtbench
validate-config``), so that a wrong path or task name fails before any job has
spent a GPU-hour: local data files, local model folders, each method's own
checks against the config (``check_config``: LESS's target set, the judges of
judge-scored pruners), lm-eval task names
(resolved against lm-eval's index, cached: qtbench.evaluate.builtin_task_names)
and FSDP runs with fewer than two GPUs.  Each error names the config key.

Relative paths are read from the working directory, as the jobs read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from qtbench.config import ConfigError, expand_runs, uses_world
from qtbench.models import looks_local

#: Suffixes that make a data source a file (a Hugging Face data set id has none).
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def _local_data(source: str) -> bool:
    return Path(source).exists() or looks_local(source) or source.endswith(DATA_SUFFIXES)


def check_data(config: Mapping[str, Any], reference_needed: bool) -> None:
    """``data.source`` (and ``data.reference_source`` when a reference model is
    trained) exist when they name local files."""
    keys = ["source"] + (["reference_source"] if reference_needed else [])
    for key in keys:
        source = config["data"].get(key)
        if not source or source == "world":
            continue
        if _local_data(source) and not Path(source).is_file():
            where = f" (relative to the working directory {Path.cwd()})" if not Path(source).is_absolute() else ""
            raise ConfigError(f"config key 'data.{key}': file {source} does not exist{where}")


def check_models(config: Mapping[str, Any]) -> None:
    """Every local model folder (``models.<m>.path`` / ``.reference``) exists
    and holds a config.json and safetensors weights; hub ids are not checked."""
    from qtbench.models import check_model_path

    for name, entry in config["models"].items():
        for key in ("path", "reference"):
            path = entry.get(key)
            if key == "reference" and path is not None:
                from qtbench.models import reference_entry

                try:
                    path = reference_entry({"name": name, **entry})["path"]
                except ValueError as exc:
                    raise ConfigError(f"config key 'models.{name}.reference': {exc}") from None
            if not path or path == "world":
                continue
            try:
                check_model_path(path)  # a local folder: exists, safetensors; a hub id: nothing offline
            except FileNotFoundError as exc:
                raise ConfigError(f"config key 'models.{name}.{key}': {exc}") from None


def check_tasks(config: Mapping[str, Any]) -> None:
    """Every ``eval.tasks`` name is a task lm-eval will find (built-in, or in
    ``eval.include_path``); the world's ``world_*`` tasks are built by a rule
    and checked when they exist."""
    from qtbench.evaluate import TaskNotFound, check_task_names

    include = config["eval"].get("include_path")
    if include and not Path(include).is_dir():
        raise ConfigError(f"config key 'eval.include_path': folder {include} does not exist")
    names = [task["name"] for task in config["eval"]["tasks"]]
    skip = "world_" if uses_world(config) and not include else None
    try:
        check_task_names(names, include, skip_prefix=skip)
    except TaskNotFound as exc:
        raise ConfigError(str(exc)) from None


def models_needing_reference(config: Mapping[str, Any]) -> dict[str, bool]:
    """Per model: does a run of its grid need a reference model fine-tuned by
    the reference_model rule (Rho-1, TokenCleaning with ``reference: null``)?"""
    from qtbench.methods.registry import required_stats

    out = {model: False for model in config["models"]}
    for run in expand_runs(config):
        if not out[run.model] and not config["models"][run.model].get("reference"):
            out[run.model] = "ref_nll" in required_stats(run.method, config["method_options"], config.get("variants"))
    return out


def check_methods(config: Mapping[str, Any]) -> None:
    """Each pruner a run uses may check its options against the whole config
    (a classmethod ``check_config(options, config, key)``, e.g. LESS's target
    set: a name missing from ``eval.tasks``, an unreadable file); ``key`` is
    where its options sit (``method_options.<m>`` or ``variants.<v>.options``)
    and the error names it."""
    from qtbench.methods.registry import part_options, resolve_method

    variants = config.get("variants") or {}
    seen: set[str] = set()
    for run in expand_runs(config):
        resolved = resolve_method(run.method, variants)
        options = part_options(run.method, config.get("method_options"), variants)
        for role, cls in resolved.classes().items():
            written = resolved.parts[role]
            check = getattr(cls, "check_config", None)
            if written in seen or not callable(check):
                continue
            seen.add(written)
            base = resolved.variants[written].method if written in resolved.variants else written
            key = f"variants.{written}.options" if written in resolved.variants else f"method_options.{base}"
            try:
                check(options[role], config, key)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def check_config(config: Mapping[str, Any], *, skip_tasks: bool = False,
                 overwrite_resources: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """All DAG-build checks of a validated config (raises :class:`ConfigError`)."""
    from qtbench.resources import check_fsdp_gpus

    reference = models_needing_reference(config)
    check_data(config, any(reference.values()))
    check_models(config)
    check_methods(config)
    check_fsdp_gpus(config, reference, overwrite_resources)
    if not skip_tasks:
        check_tasks(config)
