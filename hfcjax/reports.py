"""Files people read: rows -> JSON / CSV / Markdown from one column description, and the
one atomic-write helper every writer of hfcjax uses.

A `Column` says once how a row's value is named and formatted in each format, so the
three renderings of a table cannot drift apart. Every file is written to a temporary
name beside the target and renamed over it, so a crash never leaves half a file.
`PartialResults` keeps the finished pieces of a long report so that a rerun skips them.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from hfcjax import hashing
from hfcjax.errors import UserError

Row = Mapping[str, Any]


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it over `path` when the block ends
    without an exception (and removes it otherwise). Creates the parent folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {path.parent} ({e.strerror or e}): choose a writable location.") \
            from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: Union[str, Path], content: Union[str, bytes]) -> Path:
    """Writes `content` (text or bytes) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
    return Path(path)


def write_json(path: Union[str, Path], value: Any) -> Path:
    return atomic_write(path, json.dumps(value, indent=2) + "\n")


class PartialResults:
    """The finished pieces of a long report (rows as JSON, arrays as .npy), one file each in
    ``DIR/.partial/``, written atomically as each completes; a rerun reads them back instead
    of recomputing. `fingerprint` is everything that changes the numbers (settings, digests
    of the model and the images): pieces kept under another fingerprint are removed, never
    mixed in. `finish()` removes the folder once the report's own files are written."""

    FOLDER = ".partial"

    def __init__(self, directory: Union[str, Path], fingerprint: Mapping[str, Any],
                 log: Callable[[str], None] = print):
        self.folder, self.log = Path(directory) / self.FOLDER, log
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        self.key = hashing.text_sha256(text)[:16]
        manifest = self.folder / "fingerprint.json"
        kept = self._kept_key(manifest)
        self.stale = kept is not None and kept != self.key
        if self.stale:
            shutil.rmtree(self.folder)
            log(f"settings, model or images changed since the interrupted run: its rows in {self.folder} were "
                "removed")
        if not manifest.exists():
            write_json(manifest, {"key": self.key, "fingerprint": json.loads(text)})

    def _kept_key(self, manifest: Path) -> Optional[str]:
        """The key the kept pieces were computed under (None: none kept). A damaged manifest
        (a killed write, a full disk) sets the folder aside, named, and nothing is read back."""
        if not self.folder.exists():
            return None
        try:
            key = json.loads(manifest.read_text())["key"]
            if isinstance(key, str):
                return key
        except (OSError, ValueError, KeyError, TypeError):
            pass
        target = self.folder.with_name(f"corrupt_partial-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")
        shutil.move(str(self.folder), str(target))
        self.log(f"{manifest} is damaged (unreadable JSON or no key): moved the kept rows to {target}; "
                 "recomputing them")
        return None

    def _path(self, name: str, suffix: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "=.-" else "_" for c in name)
        return self.folder / f"{safe}{suffix}"

    def get(self, name: str) -> Optional[Any]:
        """The piece saved under `name` (a JSON value or a numpy array), or None."""
        for suffix in (".json", ".npy"):
            path = self._path(name, suffix)
            if path.exists():
                try:
                    return json.loads(path.read_text()) if suffix == ".json" else np.load(path)
                except (OSError, ValueError, EOFError) as e:  # damaged: recomputed (and rewritten)
                    self.log(f"{path} is damaged ({type(e).__name__}); recomputing {name}")
                    path.unlink(missing_ok=True)
        return None

    def put(self, name: str, value: Any) -> None:
        """Saves `value` (JSON-able, or a numpy array) under `name`, atomically."""
        if isinstance(value, np.ndarray):
            with atomic_path(self._path(name, ".npy")) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, value)
        else:
            write_json(self._path(name, ".json"), value)

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fmt3(value: Any) -> str:
    """Floats with 3 decimals, everything else as str (None as an empty cell)."""
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table: its Markdown header, its CSV header and how to get and
    format a row's value. ``markdown=None`` or ``csv=None`` leaves it out of that format."""

    markdown: Optional[str]
    csv: Optional[str]
    value: Callable[[Row], Any]
    fmt: Callable[[Any], str] = fmt3


def field(name: str, markdown: Optional[str] = None, csv_name: Optional[str] = "", index: Optional[int] = None,
          fmt: Callable[[Any], str] = fmt3) -> Column:
    """A column reading ``row[name]`` or ``row.name`` for a dataclass row (or that value's
    ``[index]``); the CSV header defaults to `name` and the Markdown header to `markdown`
    (None: not in Markdown). An indexed None (a list that was not computed) stays None."""
    value = lambda r: getattr(r, name) if dataclasses.is_dataclass(r) else r[name]
    get = value if index is None else (lambda r: None if value(r) is None else value(r)[index])
    return Column(markdown, name if csv_name == "" else csv_name, get, fmt)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are formatted with `fmt3` unless already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt3(c) for c in row) + " |")
    return "\n".join(lines)


def render_markdown(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    shown = [c for c in columns if c.markdown is not None]
    return markdown_table([c.markdown for c in shown], [[c.fmt(c.value(r)) for c in shown] for r in rows])


def render_csv(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """CSV with full-precision values (None as an empty cell)."""
    shown = [c for c in columns if c.csv is not None]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([c.csv for c in shown])
    for r in rows:
        writer.writerow(["" if c.value(r) is None else c.value(r) for c in shown])
    return buf.getvalue()


def write_table(directory: Union[str, Path], stem: str, rows: Sequence[Row], columns: Sequence[Column],
                json_value: Any) -> str:
    """Writes DIR/STEM.json (`json_value`), DIR/STEM.csv and DIR/STEM.md from `rows` and
    `columns`; returns the Markdown table."""
    directory = Path(directory)
    table = render_markdown(rows, columns)
    write_json(directory / f"{stem}.json", json_value)
    atomic_write(directory / f"{stem}.csv", render_csv(rows, columns))
    atomic_write(directory / f"{stem}.md", table + "\n")
    return table
