"""Weights & Biases behind a small facade that can never kill a job.

``start_run`` returns a :class:`Tracker`; every call on it swallows W&B errors
(missing package, no network, a server error mid-run), warns once, and turns
the tracker into a no-op so training goes on.  Metrics always reach the local
files first (trace, summary), so nothing is lost when W&B is; the warning says
how to upload an offline run later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import os
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


def start_run(
    settings: Mapping[str, Any],
    *,
    name: str,
    group: str,
    job_type: str,
    config: Mapping[str, Any],
    tags: list[str] | None = None,
    directory: str | Path | None = None,
) -> Tracker:
    """Start a W&B run as the config's ``wandb`` section says.

    ``settings["mode"]`` is ``online``, ``offline`` or ``disabled`` (the
    ``WANDB_MODE`` environment variable wins, as in W&B itself)."""
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
