"""Resumable training state: written atomically, read back only for the run that wrote it.

A checkpoint (weights, optimizer, scheduler, RNG states, data position, epoch
plan, counters, method state, trace length) is written every
``train.checkpoint_every`` optimizer steps into the run's state folder as one
directory renamed into place (:func:`save_checkpoint`); a restarted job
continues from it (:func:`load_checkpoint`) and ends with the same weights and
trace as an uninterrupted run (docs/reliability.md).  A checkpoint resumes
only the run that wrote it (:func:`run_fingerprint`: config, base model,
data); one that cannot be read safely (``weights_only=True``) costs a
restart, never a wrong resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import qtbench
from qtbench import adapters
from qtbench.io import atomic_directory, committed_directory, read_json
from qtbench.methods.base import EpochPlan
from qtbench.train.step import Counters

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
TRACE_FILE = "trace.jsonl"
CHECKPOINT_FORMAT = 2
#: Everything the trainer writes into the state folder.
_STATE_ENTRIES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", TRACE_FILE)


@dataclass
class Position:
    """Where a run stands: the epoch and window to run next, the epoch plan
    in force (and the epoch it belongs to) and the running counters."""

    epoch: int = 0
    window: int = 0
    plan: EpochPlan | None = None
    planned_epoch: int | None = None  # the epoch that ``plan`` belongs to
    counters: Counters = field(default_factory=Counters)


def _rng_state() -> dict[str, Any]:
    """Every RNG the loop may draw from, as tensors, lists and numbers only, so
    that the trainer state loads with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))


#: Train settings a checkpoint's fingerprint ignores (besides the ``wandb``
#: section): a run may resume with another checkpoint interval or thread count.
_FINGERPRINT_IGNORED_TRAIN_KEYS = ("checkpoint_every", "log_every", "threads")


def run_fingerprint(cfg: Mapping[str, Any], base_model: str, records: list[dict], *extra: Any) -> str:
    """A hash of what determines the trained weights: the run config (less
    W&B and logging settings), the base model, the records and any extras
    (static scores, reference model).  A checkpoint resumes only a run with
    the same fingerprint; a changed config starts afresh."""
    view = {k: v for k, v in cfg.items() if k != "wandb"}
    view["train"] = {k: v for k, v in dict(cfg.get("train", {})).items() if k not in _FINGERPRINT_IGNORED_TRAIN_KEYS}
    digest = hashlib.sha256()
    for part in (view, str(base_model), records, *extra):
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def save_checkpoint(state_dir: Path, model: Any, optimizer: Any, scheduler: Any, method: Any,
                    position: Position, fingerprint: str | None = None,
                    gathered: tuple[dict, dict] | None = None) -> None:
    """Write the resumable state atomically (a folder renamed into place).

    ``checkpoint/model.safetensors`` holds the exact ``state_dict`` (tied
    weights once), ``trainer_state.pt`` the optimizer, scheduler, RNG states,
    data position, epoch plan, counters and method state (tensors, lists and
    numbers only: it loads with ``weights_only=True``) and ``checkpoint.json``
    a readable summary with the run's fingerprint.  ``gathered`` is a sharded
    (FSDP) model's full (weights, optimizer state), gathered on rank 0."""
    from safetensors.torch import save_model

    target = state_dir / "checkpoint"
    plan = position.plan
    counters = position.counters
    with atomic_directory(target) as tmp:
        if gathered is None and adapters.is_lora_model(model):  # the adapters only: the rest is the base model
            from safetensors.torch import save_file

            save_file(adapters.trainable_state(model), str(tmp / WEIGHTS_FILE))
        elif gathered is None:
            save_model(model, str(tmp / WEIGHTS_FILE), force_contiguous=True)
        else:
            from safetensors.torch import save_file

            save_file(gathered[0], str(tmp / WEIGHTS_FILE))
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "optimizer": optimizer.state_dict() if gathered is None else gathered[1],
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "epoch": position.epoch,
                "window": position.window,
                "plan": None if plan is None else {"indices": list(plan.indices), "weights": dict(plan.weights),
                                                   "trace": dict(plan.trace)},
                "planned_epoch": position.planned_epoch,
                "counters": counters.as_dict(),
                "method": method.state_dict(),
            },
            tmp / STATE_FILE,
        )
        (tmp / META_FILE).write_text(json.dumps({  # the folder is committed (and synced) as a whole
            "format": CHECKPOINT_FORMAT, "qtbench_version": qtbench.__version__, "fingerprint": fingerprint,
            "optimizer_steps": counters.optimizer_steps, "epoch": position.epoch, "window": position.window,
            "trace_rows": counters.trace_rows,
        }, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_checkpoint(state_dir: Path, fingerprint: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The last committed checkpoint under ``state_dir`` and its trainer state,
    or ``None`` (with a warning saying why) when there is none, when it was
    written for another run config, or when it cannot be read safely."""
    target = committed_directory(state_dir / "checkpoint")
    if target is None:
        return None
    missing = [name for name in (STATE_FILE, WEIGHTS_FILE, META_FILE) if not (target / name).is_file()]
    if missing:
        log.warning("ignoring incomplete checkpoint %s (missing %s); starting afresh", target, ", ".join(missing))
        return None
    try:
        meta = read_json(target / META_FILE)
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to a different run config or data; starting afresh", target)
            return None
        state = torch.load(target / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint costs a restart, never a wrong resume
        log.warning("cannot read checkpoint %s (%s: %s); starting afresh", target, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("checkpoint %s has an unknown format; starting afresh", target)
        return None
    return target, state


def clear_state(state_dir: Path) -> None:
    """Remove what the trainer keeps in ``state_dir`` - and nothing else, so a
    mistaken ``--state-dir`` never deletes a user's files."""
    for name in _STATE_ENTRIES:
        entry = state_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # not empty: something else lives there


def truncate_lines(path: Path, keep: int) -> bool:
    """Cut ``path`` after its first ``keep`` lines (rows written after the
    checkpoint, and a half-written last row, go).  One ``truncate`` call: a
    kill during it cannot lose the rows kept.  False when the file holds fewer
    than ``keep`` complete lines."""
    if not path.exists():
        return keep == 0
    offset = 0
    with path.open("rb") as handle:
        for _ in range(keep):
            line = handle.readline()
            if not line.endswith(b"\n"):
                return False
            offset += len(line)
    os.truncate(path, offset)
    return True


def position_from_state(state: Mapping[str, Any]) -> Position:
    """The :class:`Position` a checkpoint's trainer state records."""
    plan = state["plan"]
    return Position(int(state["epoch"]), int(state["window"]),
                    None if plan is None else EpochPlan([int(i) for i in plan["indices"]],
                                                        {int(k): float(v) for k, v in plan["weights"].items()},
                                                        dict(plan["trace"])),
                    state["planned_epoch"], Counters(**state["counters"]))
