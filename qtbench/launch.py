"""Run a command on N GPUs of this machine that no other qtbench job holds.

``python -m qtbench.launch launch --gpus N [--distributed] -- <command>`` is
how every GPU rule of the Snakefile starts its job: it takes N free GPUs by
lock files (:func:`claim_gpus`), sets ``CUDA_VISIBLE_DEVICES`` and runs the
command - with ``--distributed`` and N > 1 under ``torchrun`` with N processes
(:func:`launch_command`), whose environment :mod:`qtbench.train.parallel`
joins.  Under SLURM the allocation already says which GPUs are the job's, and
no locks are taken.  It imports no torch unless it must count GPUs itself.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` entries when set,
    else ``0..n-1`` for the devices torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@contextlib.contextmanager
def claim_gpus(count: int, lock_dir: str | Path, candidates: Sequence[str] | None = None,
               timeout_s: float | None = None, poll_s: float = 5.0) -> Iterator[list[str]]:
    """Hold ``count`` GPUs of this machine exclusively (one ``flock``-ed file per
    GPU in ``lock_dir``) for the ``with`` block; wait until enough are free.

    Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs ask
    for in total, not which ones they use: without this every job would run on
    GPU 0.  Locks die with the process, so a killed job frees its GPUs."""
    candidates = list(visible_gpus() if candidates is None else candidates)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count > len(candidates):
        raise RuntimeError(f"{count} GPU(s) asked for, but this machine shows {len(candidates)}: {candidates}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    held: list[tuple[str, Any]] = []
    try:
        while True:
            for gpu in candidates:
                if len(held) == count:
                    break
                if any(g == gpu for g, _ in held):
                    continue
                handle = open(lock_dir / f"gpu{gpu}.lock", "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()
                    continue
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                held.append((gpu, handle))
            if len(held) == count:
                break
            # not enough free: give back what we hold (no deadlock between jobs), wait, retry
            for _, handle in held:
                handle.close()
            held.clear()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no {count} free GPU(s) among {candidates} within {timeout_s} s (locks in {lock_dir})")
            time.sleep(poll_s)
        yield [gpu for gpu, _ in held]
    finally:
        for _, handle in held:
            handle.close()


def free_port() -> int:
    """A TCP port that is free now (for a process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(command: Sequence[str], processes: int, port: int | None = None) -> list[str]:
    """``command`` as it runs with ``processes`` processes on this machine:
    unchanged for one, else under ``torchrun`` (``python -m
    torch.distributed.run --nnodes 1 --nproc_per_node N ...``) around a
    ``<python> -m <module> ...`` or ``<script> ...`` command.

    torchrun is what ``accelerate launch --multi_gpu`` runs underneath; the
    trainer needs nothing more than the environment it sets (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), and it
    also runs CPU processes (gloo), which is how the tests run it."""
    command = list(command)
    if processes <= 1:
        return command
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(port or free_port())]
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        return launcher + ["-m", command[2], *command[3:]]
    return launcher + command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qtbench.launch",
        description="Run a command on N GPUs of this machine that no other qtbench job holds.")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("launch", help="take N free GPUs, set CUDA_VISIBLE_DEVICES, run the command")
    p.add_argument("--gpus", type=int, required=True, help="GPUs the job uses (a rule's resources.gpu); 0 = none")
    p.add_argument("--distributed", action="store_true",
                   help="with N > 1, run the command under torchrun with N processes (one per GPU)")
    p.add_argument("--lock-dir", default=os.environ.get("QTBENCH_GPU_LOCK_DIR", os.path.join(tempfile.gettempdir(), "qtbench-gpu-locks")),
                   help="one lock file per GPU (default $QTBENCH_GPU_LOCK_DIR or <tmp>/qtbench-gpu-locks)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for free GPUs (default: forever)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")

    env = dict(os.environ)
    if args.gpus <= 0:  # a job that declared no GPU sees none (it would take GPU 0 otherwise)
        env["CUDA_VISIBLE_DEVICES"] = ""
        return _run(command, env)
    scheduler_assigned = "SLURM_JOB_ID" in os.environ or os.environ.get("QTBENCH_NO_GPU_LOCK") == "1"
    if scheduler_assigned:
        gpus = visible_gpus()[: args.gpus]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return _run(launch_command(command, len(gpus) if args.distributed else 1), env)
    with claim_gpus(args.gpus, args.lock_dir, timeout_s=args.timeout) as gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        print(f"qtbench.launch: GPU(s) {env['CUDA_VISIBLE_DEVICES']} for: {shlex.join(command)}", file=sys.stderr)
        return _run(launch_command(command, len(gpus) if args.distributed else 1), env)


def _run(command: Sequence[str], env: dict[str, str]) -> int:
    """Run ``command``; forward SIGTERM/SIGINT (Snakemake cancelling, SLURM
    preempting) to it and return its exit status."""
    child = subprocess.Popen(list(command), env=env)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
