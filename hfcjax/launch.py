"""Starts N local processes of one command as a JAX multi-process job.

    python -m hfcjax.launch --processes 2 [--cpu_devices 2] -- python -m hfcjax.main --distributed ...

Each process gets ``JAX_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which `--distributed` reads; with
`--cpu_devices D` each simulates D CPU devices (``JAX_NUM_CPU_DEVICES``, ``JAX_PLATFORMS=cpu``);
with `--one_accelerator_each` process i sees only local accelerator i
(``JAX_LOCAL_DEVICE_IDS``). Every output line is prefixed with ``[i]``. When one process
fails, the others get `--grace` seconds to stop on their own (the coordinator's failure
detection ends them) and are then terminated; the launcher exits with the first failure's
status, so a job never hangs. SIGINT/SIGTERM are passed on to every process.
For tests, and for one process per GPU on a host; pods and SLURM start processes themselves.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environments(processes: int, port: int, cpu_devices: int = 0, one_accelerator_each: bool = False,
                 base: Optional[dict] = None) -> List[dict]:
    """The environment of each process."""
    out = []
    for i in range(processes):
        env = {**(os.environ if base is None else base), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i), "PYTHONUNBUFFERED": "1"}
        if cpu_devices:
            env.update(JAX_NUM_CPU_DEVICES=str(cpu_devices), JAX_PLATFORMS="cpu")
        if one_accelerator_each:
            env["JAX_LOCAL_DEVICE_IDS"] = str(i)
        out.append(env)
    return out


def _relay(i: int, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{i}] {line}")
        out.flush()


def run(command: Sequence[str], processes: int, *, cpu_devices: int = 0, one_accelerator_each: bool = False,
        port: int = 0, grace: float = 60.0) -> int:
    """Runs `command` as `processes` processes; returns 0 or the first failure's exit status."""
    envs = environments(processes, port or free_port(), cpu_devices, one_accelerator_each)
    procs = [subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for env in envs]
    for i, p in enumerate(procs):
        print(f"[launch] process {i}: pid {p.pid}", file=sys.stderr, flush=True)
    relays = [threading.Thread(target=_relay, args=(i, p.stdout, sys.stdout), daemon=True) for i, p in enumerate(procs)]
    for t in relays:
        t.start()

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed_at, status = None, 0
        while any(p.poll() is None for p in procs):
            failure = next((p for p in procs if p.poll() not in (None, 0)), None)
            if failure is not None and failed_at is None:
                failed_at, status = time.time(), failure.returncode
                print(f"[launch] process {procs.index(failure)} exited with status {status}; the others get "
                      f"{grace:g}s to stop", file=sys.stderr, flush=True)
            if failed_at is not None and time.time() - failed_at > grace:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                time.sleep(5)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
        for t in relays:
            t.join(timeout=5)
        return exit_status(status or next((p.returncode for p in procs if p.returncode), 0))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: killed by signal N (Popen's -N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def is_distributed(command: Sequence[str]) -> bool:
    return any(a in ("--distributed", "--distributed=true", "--distributed=True", "--distributed=1")
               for a in command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("error: usage: python -m hfcjax.launch --processes N [--cpu_devices D] -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m hfcjax.launch")
    parser.add_argument("--processes", type=int, required=True, help="How many processes to start.")
    parser.add_argument("--cpu_devices", type=int, default=0, help="Simulated CPU devices per process (0: real ones).")
    parser.add_argument("--one_accelerator_each", action="store_true", help="Process i sees local accelerator i.")
    parser.add_argument("--port", type=int, default=0, help="Coordinator port on 127.0.0.1 (0: a free one).")
    parser.add_argument("--grace", type=float, default=60.0, help="Seconds the others get after one process fails.")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if args.processes < 1 or not command:
        print("error: --processes must be >= 1 and a command must follow --", file=sys.stderr)
        return 2
    if args.processes > 1 and not is_distributed(command):
        print(f"error: the command has no --distributed: its {args.processes} processes would be {args.processes} "
              "independent runs writing into one workdir. Add --distributed (hfcjax.main and hfcjax.evaluate read "
              "the coordinator this launcher sets).", file=sys.stderr)
        return 2
    return run(command, args.processes, cpu_devices=args.cpu_devices, one_accelerator_each=args.one_accelerator_each,
               port=args.port, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
