"""Owning a folder while a job writes into it: a lock file with the owner's host and pid,
taken atomically, refused while the owner lives, taken over when it is gone."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable

from hfcjax.errors import UserError


class WorkdirBusy(UserError):
    """Another run owns the workdir; the message names it."""


class WorkdirLock:
    """One owner per folder: the lock file at `path` (a run directory's is
    `checkpoints.RunDir(workdir).lock`) holds the owner's host and pid while it runs.

    A lock left by a process of this host that no longer runs is stale and taken over; a
    live owner, or one on another host (which cannot be checked from here), is refused.
    """

    def __init__(self, path, log: Callable[[str], None] = print, what: str = "workdir", flag: str = "--workdir"):
        self.path, self.log, self.held = Path(path), log, False
        self.what, self.flag = what, flag  # how messages name the folder and the flag that chooses another

    def __enter__(self) -> "WorkdirLock":
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._check_owner(me["host"])
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                self.held = True
                return self
        except OSError as e:
            raise WorkdirBusy(f"cannot write to the {self.what} {self.path.parent} ({e.strerror or e}): "
                              f"choose a writable {self.flag}.") from None
        raise WorkdirBusy(f"could not take {self.path}; another job is starting in the same {self.what}.")

    def _check_owner(self, host: str) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        pid, owner_host = owner.get("pid"), owner.get("host")
        if owner_host == host and isinstance(pid, int) and not _alive(pid):
            self.log(f"taking over the stale lock {self.path} of pid {pid} (no longer running)")
            self.path.unlink(missing_ok=True)
            return
        raise WorkdirBusy(f"the {self.what} {self.path.parent} is in use by pid {pid} on host {owner_host} since "
                          f"{owner.get('started')}: wait for that job, choose another {self.flag}, or delete "
                          f"{self.path} if that job is gone.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
