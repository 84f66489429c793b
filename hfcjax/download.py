"""Fetching a published file once: download, verify its sha256, then put it in place.

`fetch(url, dest, checks)` streams `url` to a temporary file beside `dest` while hashing
it, with progress and an ETA; the file is renamed to `dest` only when one of `checks`
accepts it, and deleted otherwise, so a corrupt or truncated download is never used.
`extract_tar(archive, into)` unpacks an archive into a folder atomically (a temporary
folder renamed into place), refusing members that would land outside it.
The mirror named by ``$HFCJAX_DATA_URL`` (`URL_VARIABLE`) replaces a dataset's canonical host
(`data.fetch` reads it).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

from hfcjax import hashing
from hfcjax.errors import UserError

URL_VARIABLE = "HFCJAX_DATA_URL"
TIMEOUT_S = 30  # a connection that sends nothing for this long fails
DEADLINE_VARIABLE = "HFCJAX_DOWNLOAD_DEADLINE"
DEADLINE_S = 1800.0  # a whole file (a server that sends a byte every few seconds never trips TIMEOUT_S)


def deadline_s() -> float:
    """Seconds a whole download may take: $HFCJAX_DOWNLOAD_DEADLINE, else DEADLINE_S."""
    text = os.environ.get(DEADLINE_VARIABLE, "").strip()
    if not text:
        return DEADLINE_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise DownloadError(f"${DEADLINE_VARIABLE}={text!r} must be a number of seconds > 0.")
    return value


class DownloadError(UserError):
    """A download failed or was corrupt; the message is one line saying which and why."""


@dataclasses.dataclass(frozen=True)
class Check:
    """An accepted file: the sha256 of its bytes, or (`gunzip`) of its gunzipped bytes, so a
    mirror that re-compressed the same data (other gzip headers) is accepted too."""

    sha256: str
    gunzip: bool = False

    def accepts(self, path: Path, raw_sha256: str) -> bool:
        if not self.gunzip:
            return raw_sha256 == self.sha256
        try:
            with gzip.open(path, "rb") as f:
                return hashing.stream_sha256(f) == self.sha256
        except (OSError, EOFError):  # truncated or not gzip at all
            return False


def fetch(url: str, dest: Path, checks: Sequence[Check], log: Callable[[str], None] = print,
          deadline: Optional[float] = None) -> Path:
    """Downloads `url` to `dest` unless `dest` exists; verified by `checks` (any one). The
    whole download must finish within `deadline` seconds (default `deadline_s()`) and no read
    may wait more than TIMEOUT_S; otherwise the partial file is removed and it says so."""
    dest = Path(dest)
    deadline = deadline_s() if deadline is None else deadline
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - http(s) of the dataset's host
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url} ({reason})") from None
    size = int(response.headers.get("Content-Length") or 0)
    done, start, shown = 0, time.time(), [0.0]

    def progress(n):
        nonlocal done
        done += n
        now = time.time()
        if size > 5e6 and (now - shown[0] > 2 or done == size):
            shown[0] = now
            rate = done / max(now - start, 1e-9)
            log(f"  downloading {dest.name}: {done / 1e6:.1f}/{size / 1e6:.1f} MB | {rate / 1e6:.1f} MB/s | "
                f"ETA {(size - done) / max(rate, 1e-9):.0f}s")

    try:
        h = hashlib.sha256()
        with response, open(tmp, "wb") as out:
            while chunk := response.read1(1 << 20):  # returns what has arrived: the deadline is checked
                out.write(chunk)
                h.update(chunk)
                progress(len(chunk))
                if time.time() - start > deadline:
                    raise DownloadError(f"download of {url} took longer than {deadline:g}s ({done} bytes so far, "
                                        f"{done / max(time.time() - start, 1e-9):,.0f} B/s); the partial file was "
                                        f"deleted. Try again, another mirror (${URL_VARIABLE}) or a longer "
                                        f"${DEADLINE_VARIABLE}")
        raw = h.hexdigest()
        if size and done != size:
            raise DownloadError(f"download of {url} is truncated ({done} of {size} bytes); it was deleted, try again")
        if not any(check.accepts(tmp, raw) for check in checks):
            raise DownloadError(f"download of {url} is corrupt (sha256 {raw[:16]}..., {done} bytes, matches no "
                                f"published checksum); it was deleted, try again or use another mirror "
                                f"(${URL_VARIABLE})")
        os.replace(tmp, dest)
    except (OSError, EOFError, http.client.HTTPException) as e:  # a connection cut mid-stream, a full disk
        raise DownloadError(f"download of {url} failed after {done} bytes ({e}); it was deleted, try again") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def extract_tar(archive: Path, into: Path, member_root: str) -> Path:
    """Unpacks `member_root`/ of `archive` to `into` (which must not exist yet), atomically."""
    into = Path(into)
    tmp = into.with_name(into.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not parts or parts[0] != member_root or ".." in parts or not (member.isfile() or member.isdir()):
                    continue
                target = tmp.joinpath(*parts[1:])
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, into)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DownloadError(f"cannot unpack {archive} ({e}); delete it and try again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return into
