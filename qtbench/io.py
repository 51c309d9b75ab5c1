"""File I/O: atomic output, and the project's one JSON / JSON-lines reader.

Output is atomic: a killed job never leaves a half-written result behind.
Files are written to a temporary sibling and renamed into place (``os.replace``
is atomic on POSIX).  Folders are built under ``<name>.tmp`` and committed by
two renames - the old folder to ``<name>.old``, then ``<name>.tmp`` to
``<name>`` - so that at every instant a complete copy exists under ``<name>``
or, for the instant between the renames, under ``<name>.old``;
:func:`committed_directory` finds it.  A leftover ``<name>.tmp`` is an
unfinished write and is never read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, data: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("sort_keys", True)
    return write_text_atomic(path, json.dumps(data, **kwargs) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file when it is missing, truncated or not text."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, expected a JSON file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (corrupt?): {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno}") from None


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file, one per non-blank line, read lazily.

    A line that is not valid JSON (a file cut short by a killed writer), or
    not a JSON object, raises ``ValueError`` naming the file and the line."""
    for _, row in iter_jsonl_numbered(path):
        yield row


def iter_jsonl_numbered(path: str | Path, objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line (errors as :func:`iter_jsonl`),
    for readers that check each object and must say where a bad one is;
    ``objects_only=False`` yields any JSON value (the caller reports non-objects)."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {number} is not valid JSON (truncated?): {exc.msg}") from None
                if objects_only and not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} is not a JSON object (got {type(row).__name__})")
                yield number, row
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text (corrupt?): {exc.reason}") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file (blank lines skipped; ``[]`` for an
    empty file); errors as :func:`iter_jsonl`."""
    return list(iter_jsonl(path))


def _sync_tree(root: Path) -> None:
    """fsync every file under ``root`` (written data reaches the disk before the rename)."""
    for item in root.rglob("*"):
        if item.is_file() and not item.is_symlink():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def committed_directory(path: str | Path) -> Path | None:
    """The last committed copy of a folder written by :func:`atomic_directory`:
    ``path`` itself, or ``<path>.old`` when a commit was interrupted between its
    two renames; ``None`` when neither exists.  ``<path>.tmp`` is never returned."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


@contextmanager
def atomic_directory(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block succeeds.

    If the block raises, the temporary folder is removed and ``path`` is left
    as it was.  A process killed at any point leaves either the previous
    complete folder or the new one (see :func:`committed_directory`), plus
    perhaps a ``.tmp``/``.old`` sibling that the next write clears.  With
    ``durable`` the files are fsync'ed before the commit, so the guarantee
    also holds across a power loss."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if durable:
            _sync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Commit.  Invariant: a complete copy lives at ``path`` or, only between
    # the two renames below, at ``old``.
    if path.exists():
        if old.exists():
            shutil.rmtree(old)  # an older copy: ``path`` is complete
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
