"""Shared by the command-line entry points: one-line errors and list-flag conversion.

(Process set-up that must happen before JAX is imported, huge-page malloc, is a platform
choice and lives in `hfcjax.backend`.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import List, Optional, Sequence

from hfcjax import backend
from hfcjax.errors import UserError


class UsageError(UserError):
    """A command-line value is malformed; the message names the flag."""


def floats(values: Sequence[str], flag: str) -> List[float]:
    """Numbers from an absl list flag (``--eps 0.03,0.06``), or a UsageError naming the flag."""
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(f"--{flag} must be comma-separated numbers, got {','.join(values)!r}.") from None


def fail(message: str, code: int = 2):
    """Prints `message` as one line after "error: " (just the line when `code` is 0: a clean
    stop such as a preemption) and exits with `code`."""
    print(("error: " if code else "") + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def clear_errors():
    """Turns what a user did wrong (`errors.UserError`: bad config or flags, missing data or
    checkpoints, NaN loss, a stop by a signal) and Ctrl-C into one line on stderr and exit
    status 2 (or the exception's `exit_code`, e.g. 130 after SIGINT). Anything else is a bug
    and shows its traceback, except a failed collective in a multi-process job (a peer died)."""
    try:
        yield
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); files are only ever written whole: rerun the same command to continue.", 130)
    except UserError as e:
        fail(str(e), e.exit_code)
    except Exception as e:  # noqa: BLE001 - re-raised unless a peer process died
        if type(e).__module__.startswith(("jax", "jaxlib")) and _processes() > 1:
            peer_failed(e)  # in a job, a failed collective means another process is gone
        raise


def _processes() -> int:
    jax = sys.modules.get("jax")
    return jax.process_count() if jax is not None else 1


def peer_failed(e: BaseException) -> None:
    """One line and an immediate exit (status 3): JAX's own shutdown would wait on, and then
    abort for, the process that is gone."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    print(f"error: a collective across processes failed ({type(e).__name__}: {first}): another process of the job "
          "died or was killed. Start the same command on every process again: the run resumes from its last "
          "complete checkpoint.", file=sys.stderr, flush=True)
    os._exit(3)


def parse_flags(argv: List[str], flag_values=None) -> List[str]:
    """absl's flag parsing (of `flag_values`, default the global FLAGS, as for
    `app.run(main, flags_parser=cli.parse_flags)`), with one line for a bad flag, an unknown
    or mistyped config key, or a config file that does not load."""
    from absl import flags

    if flag_values is not None and any(a in ("-h", "-help", "--help", "--helpfull") for a in argv[1:]):
        name, folder = os.path.splitext(os.path.basename(argv[0]))[0], os.path.basename(os.path.dirname(argv[0]))
        print(f"usage: {f'python -m hfcjax.{name}' if folder == 'hfcjax' else name} [flags]\n\n{flag_values.get_help(include_special_flags=False)}")
        sys.exit(0)  # (absl's app.run answers --help for the global FLAGS; a command's own FlagValues here)
    with flag_errors():
        return (flags.FLAGS if flag_values is None else flag_values)(argv)


@contextlib.contextmanager
def flag_errors():
    """One line and exit 2 for what defining or parsing flags raises on bad input."""
    from absl import flags

    try:
        yield
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown config key, with its "Did you mean"
        text = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
        fail(f"unknown config key {text}")
    except (OSError, SyntaxError, ImportError) as e:  # the config file itself
        fail(str(e))


def loaded_config(config):
    """The value of a --config flag, or one line when its file did not load (ml_collections
    reports that only when the config is first used)."""
    with flag_errors():
        config.keys()
    return config


def define_distributed_flags(flag_values=None) -> None:
    """--distributed and the explicit values of JAX's multi-process runtime; the values
    default to the environment variables `hfcjax.launch` (or a job script) sets."""
    from absl import flags

    env, fv = os.environ.get, flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_bool("distributed", False, "Start JAX's multi-process runtime first (several hosts, or one process "
                      "per accelerator). Without the three values below JAX detects TPU pods, SLURM, GKE, Open MPI.",
                      flag_values=fv)
    flags.DEFINE_string("coordinator_address", env("JAX_COORDINATOR_ADDRESS"), "host:port of process 0's coordinator "
                        "($JAX_COORDINATOR_ADDRESS).", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Processes in the job (default $JAX_NUM_PROCESSES).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1 (default $JAX_PROCESS_ID).",
                         flag_values=fv)
    flags.DEFINE_integer("heartbeat_timeout", None, "Seconds without a heartbeat after which a process counts as dead "
                         "and the job stops (default $HFCJAX_HEARTBEAT_TIMEOUT, else 100).", flag_values=fv)


def env_int(name: str, low: int = 0) -> Optional[int]:
    """An integer environment variable (None when unset or empty), or one line saying what is wrong."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        fail(f"${name}={text!r} is not an integer >= {low}: set it to one (hfcjax.launch sets it for each process) "
             "or unset it.")
    return value


def _distributed_values(F):
    """(coordinator address, process count, process id, heartbeat seconds): flags first, then
    the environment `hfcjax.launch` (or a job script) sets."""
    pick = lambda flag, name, low: flag if flag is not None else env_int(name, low)
    heartbeat = pick(F.heartbeat_timeout, "HFCJAX_HEARTBEAT_TIMEOUT", 1)
    return (F.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
            pick(F.num_processes, "JAX_NUM_PROCESSES", 1), pick(F.process_id, "JAX_PROCESS_ID", 0),
            100 if heartbeat is None else heartbeat)


def check_port_free(address: str) -> None:
    """One line when process 0's coordinator port is taken (JAX itself would crash on it)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        fail(f"--coordinator_address {address!r} must be host:port.")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", int(port)))
        except OSError as e:
            fail(f"the coordinator address {address} cannot be served here ({e.strerror or e}): another job holds "
                 "that port; choose a free one (hfcjax.launch picks one when --port is 0).")


def start_distributed(flag_values=None) -> None:
    """Starts the multi-process runtime when --distributed was given (after flag parsing)."""
    from absl import flags

    F = flags.FLAGS if flag_values is None else flag_values
    if not F.distributed:
        return
    address, processes, process_id, heartbeat = _distributed_values(F)
    explicit = (address, processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        fail("give --coordinator_address, --num_processes and --process_id together (or none of them, to let JAX "
             "detect a TPU pod, SLURM, GKE or Open MPI).")
    if process_id is not None and not 0 <= process_id < processes:
        fail(f"--process_id {process_id} must lie in [0, {processes}).")
    if process_id == 0:
        check_port_free(address)
    try:
        backend.start_distributed(*explicit, heartbeat_timeout_s=heartbeat)
    except Exception as e:  # noqa: BLE001 - what JAX raises when it cannot reach the coordinator
        fail(f"cannot start the multi-process runtime ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); "
             "check --coordinator_address and that every process was started.")
