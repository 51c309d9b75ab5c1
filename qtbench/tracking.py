"""Weights & Biases behind a small facade that can never kill a job.

``start_run`` returns a :class:`Tracker`; every call on it swallows W&B errors
(missing package, no network, a server error mid-run), warns once, and turns
the tracker into a no-op so training goes on.  Metrics always reach the local
files first (trace, summary), so nothing is lost when W&B is; the warning says
how to upload an offline run later with ``wandb sync``.

Run ids are stable: :func:`stable_run_id` derives a run's W&B id from the
experiment, the run id, the job type and the settings that can change its
numbers, and ``wandb.init(resume="allow")`` continues that run - a training
job requeued by SLURM after preemption logs into the run it started, while a
run retrained with another learning rate gets a run of its own.  (This needs
``reinit="create_new"``, W&B >= 0.19.10.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


class Tracker:
    """A W&B run, or a no-op twin when W&B is disabled or has failed."""

    def __init__(self, run: Any = None, mode: str = "disabled", directory: Path | None = None) -> None:
        self._run = run
        self.mode = mode
        self.directory = directory
        self.failed = False

    @property
    def active(self) -> bool:
        return self._run is not None and not self.failed

    @property
    def run_dir(self) -> str | None:
        return getattr(self._run, "dir", None) if self._run is not None else None

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any W&B failure must stay a warning
            self.failed = True
            _warn_failure(what, exc, self.directory)
            return None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._guard("log", lambda: self._run.log(dict(metrics), step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self._run.summary.update(dict(values)))

    def log_table(self, key: str, frame: Any) -> None:
        def _log() -> None:
            import wandb

            self._run.log({key: wandb.Table(dataframe=frame.reset_index(drop=True))})

        self._guard("log_table", _log)

    def log_image(self, key: str, path: str | Path) -> None:
        def _log() -> None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

        self._guard("log_image", _log)

    def log_artifact(self, name: str, kind: str, folders: list[str | Path] = (), files: list[str | Path] = (),
                     metadata: Mapping[str, Any] | None = None) -> None:
        """Upload ``folders`` (each under its own name) and ``files`` as one
        W&B artifact ``name`` of type ``kind`` (e.g. the tables and plots of an
        experiment, or a checkpoint).  Missing paths are skipped."""

        def _log() -> None:
            import wandb

            artifact = wandb.Artifact(artifact_name(name), type=kind, metadata=dict(metadata or {}))
            for folder in folders:
                if Path(folder).is_dir():
                    artifact.add_dir(str(folder), name=Path(folder).name)
            for file in files:
                if Path(file).is_file():
                    artifact.add_file(str(file))
            self._run.log_artifact(artifact)

        self._guard("log_artifact", _log)

    def finish(self) -> None:
        self._guard("finish", lambda: self._run.finish())
        self._run = None


def _warn_failure(what: str, exc: BaseException, directory: Path | None) -> None:
    where = f" under {directory}" if directory else ""
    warnings.warn(
        f"W&B {what} failed ({type(exc).__name__}: {exc}); training goes on and metrics stay in the local "
        f"trace and summary files. Offline run files{where} can be uploaded later with `wandb sync <run dir>`.",
        RuntimeWarning,
        stacklevel=3,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")


def artifact_name(name: str) -> str:
    """A W&B artifact name (letters, digits, '-', '_', '.') for ``name``."""
    return _slug(name)[:120] or "artifact"


def config_key(config: Mapping[str, Any]) -> str:
    """A short hash of what in ``config`` can change a run's numbers: the
    ``wandb`` section and the train/eval settings that change no output
    (qtbench.config.RUNTIME_TRAIN_KEYS / RUNTIME_EVAL_KEYS) are left out."""
    from qtbench.config import RUNTIME_EVAL_KEYS, RUNTIME_TRAIN_KEYS

    view = {k: v for k, v in config.items() if k != "wandb"}
    for section, keys in (("train", RUNTIME_TRAIN_KEYS), ("eval", RUNTIME_EVAL_KEYS)):
        if isinstance(view.get(section), Mapping):
            view[section] = {k: v for k, v in view[section].items() if k not in keys}
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stable_run_id(group: str, name: str, job_type: str, key: str = "") -> str:
    """The W&B run id of one job: readable (``<group>-<name>-<job_type>`` with
    '/' and other characters W&B refuses in ids turned into '-', at most 50
    characters) plus a hash of all four parts, so the same job always gets the
    same id and two jobs never share one."""
    digest = hashlib.sha256("\0".join((group, name, job_type, key)).encode()).hexdigest()[:12]
    readable = name if name.endswith(f"/{job_type}") else f"{name}-{job_type}"  # "tiny/base/eval" says it once
    return f"{_slug(f'{group}-{readable}')[:50]}-{digest}"


def start_run(
    settings: Mapping[str, Any],
    *,
    name: str,
    group: str,
    job_type: str,
    config: Mapping[str, Any],
    tags: list[str] | None = None,
    directory: str | Path | None = None,
    run_key: str | None = None,
) -> Tracker:
    """Start (or continue) a W&B run as the config's ``wandb`` section says.

    ``settings["mode"]`` is ``online``, ``offline`` or ``disabled`` (the
    ``WANDB_MODE`` environment variable wins, as in W&B itself).  The run's id
    is :func:`stable_run_id` of ``group``, ``name``, ``job_type`` and
    ``run_key`` (default: :func:`config_key` of ``config``), with
    ``resume="allow"``: a requeued job continues its own run."""
    mode = os.environ.get("WANDB_MODE", settings.get("mode", "offline"))
    directory = Path(directory) if directory else None
    if mode == "disabled":
        return Tracker(mode=mode)
    try:
        import wandb

        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        init = dict(
            project=settings.get("project", "qtbench"),
            entity=settings.get("entity"),
            name=name,
            group=group,
            job_type=job_type,
            tags=tags or [],
            config=dict(config),
            dir=str(directory) if directory else None,
            reinit="create_new",
            id=stable_run_id(group, name, job_type, config_key(config) if run_key is None else run_key),
            resume="allow",
        )
        timeout = float(settings.get("init_timeout", 15))
        try:
            run = wandb.init(**init, mode=mode, settings=wandb.Settings(init_timeout=timeout, silent=True, console="off"))
            return Tracker(run, mode, directory)
        except Exception as exc:  # noqa: BLE001
            if mode != "online":
                raise
            # no network, or a W&B outage: record the run offline, to `wandb sync` later
            _warn_failure("online init", exc, directory)
            run = wandb.init(**init, mode="offline", settings=wandb.Settings(silent=True, console="off"))
            return Tracker(run, "offline", directory)
    except Exception as exc:  # noqa: BLE001
        _warn_failure("init", exc, directory)
        tracker = Tracker(mode=mode, directory=directory)
        tracker.failed = True
        return tracker


def log_experiment_artifacts(tracker: Tracker, experiment: str, tables: str | Path, plots: str | Path | None,
                             run_dirs: list[str | Path] = (), checkpoints: bool = False) -> None:
    """The aggregate run's artifacts: ``<experiment>-results`` (the tables and
    plots folders), and with ``checkpoints`` (``wandb.log_checkpoints``) one
    ``model`` artifact per run's checkpoint folder - gigabytes per 7B run, so
    off by default."""
    tracker.log_artifact(f"{experiment}-results", "results", folders=[p for p in (tables, plots) if p])
    if not checkpoints:
        return
    for run_dir in run_dirs:
        run = Path(run_dir)  # <results>/runs/<model>/<method>/<budget>/seed<k>/checkpoint
        run_id = "/".join(run.parts[-5:-1]) if run.name == "checkpoint" else run.name
        tracker.log_artifact(f"{experiment}-{run_id}", "model", folders=[run], metadata={"run_id": run_id})
