"""Command line: python -m hfcjax.fetch --url URL --sha256 HEX --out FILE

Downloads a file the user names (a RobustBench model's ``.pt`` from a mirror they trust, say)
through `download.fetch`: streamed with progress and an ETA, put in place only when its
sha256 is the one given, deleted otherwise, never half-written. RobustBench publishes no
checksums: take the sha256 of a copy you trust (``sha256sum FILE``). An existing FILE with
that sha256 is kept (nothing is downloaded); one with another sha256 is refused.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from hfcjax import cli, download, hashing
from hfcjax.errors import UserError


def fetch_file(url: str, sha256: str, out, log=print) -> Path:
    """`out` holding the bytes of `url` whose sha256 is `sha256` (downloaded unless there)."""
    digest = (sha256 or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise cli.UsageError(f"--sha256 must be the 64 hex digits of the file's sha256 (sha256sum FILE), got "
                             f"{sha256!r}.")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write, e.g. {out / Path(url).name}.")
    if out.exists():
        found = hashing.file_sha256(out)
        if found != digest:
            raise UserError(f"{out} exists with sha256 {found[:16]}..., not the {digest[:16]}... asked for: remove "
                            "it or choose another --out.")
        log(f"{out} is already there (sha256 verified); nothing downloaded.")
        return out
    download.fetch(url, out, [download.Check(digest)], log=log)
    log(f"{out}: {out.stat().st_size:,} bytes, sha256 verified.")
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    from absl import flags

    argv = list(sys.argv if argv is None else argv)
    fv = flags.FlagValues()
    flags.DEFINE_string("url", None, "http(s) URL of the file.", flag_values=fv)
    flags.DEFINE_string("sha256", None, "The file's sha256 (64 hex digits): the download is kept only if it matches.",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Where to put the file.", flag_values=fv)
    flags.mark_flags_as_required(["url", "sha256", "out"], flag_values=fv)
    rest = cli.parse_flags(argv, fv)
    if len(rest) > 1:
        cli.fail(f"unexpected arguments: {rest[1:]}")
    with cli.clear_errors():
        fetch_file(fv.url, fv.sha256, fv.out)


if __name__ == "__main__":
    main()
