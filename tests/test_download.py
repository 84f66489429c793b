"""Downloads of the published files, against an HTTP server on 127.0.0.1 serving ../shared/data
(never a real host): verified, cached, extracted; corrupt, truncated and offline cases."""

import dataclasses
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hfcjax import data, download, fetch, hashing


class Handler(http.server.SimpleHTTPRequestHandler):
    requests = []
    cut = set()  # paths whose body is cut in half after a full Content-Length
    trickle = set()  # paths sent one byte every 0.2 s

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append(self.path)
        if self.path in Handler.cut:
            body = Path(self.directory, self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        if self.path in Handler.trickle:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass
            return
        super().do_GET()


@pytest.fixture
def mirror(tmp_path, data_dir, monkeypatch):
    """A mirror of the real data (fashion-mnist/*.gz; a CIFAR-10 tarball made from the real subset,
    with its own checksum patched in) on 127.0.0.1, and nothing in any data folder."""
    root = tmp_path / "mirror"
    shutil.copytree(data_dir / "fashion-mnist", root / "fashion-mnist")
    tarball = root / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(data_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = data.DATASETS["cifar10"]
    check = download.Check(hashing.file_sha256(tarball))
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(
        spec, remote=dataclasses.replace(spec.remote, files=(("cifar-10-python.tar.gz", (check,)),))))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Handler.requests, Handler.cut, Handler.trickle = [], set(), set()
    monkeypatch.setenv("HFCJAX_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HFCJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HFCJAX_DOWNLOAD", "1")  # the one server is on 127.0.0.1: allowed under HFCJAX_DOWNLOAD=0
    monkeypatch.setenv("HFCJAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-datasets")
    yield root
    server.shutdown()


def test_fashion_mnist_is_downloaded_once_verified_and_equal_to_the_files(mirror, data_dir, tmp_path):
    x, y = data.load("fashion_mnist", "test")
    expected = data.load("fashion_mnist", "test", source="files", data_dir=str(data_dir))
    np.testing.assert_array_equal(x, expected[0])
    np.testing.assert_array_equal(y, expected[1])
    cached = sorted(p.name for p in (tmp_path / "cache" / "fashion-mnist").iterdir())
    assert cached == sorted(p.name for p in (data_dir / "fashion-mnist").iterdir())  # all four, no .part left
    assert len(Handler.requests) == 4
    data.load("fashion_mnist", "train")
    assert len(Handler.requests) == 4  # the cache serves every later load


def test_cifar10_tarball_is_extracted_and_removed(mirror, data_dir, tmp_path):
    x, y = data.load("cifar10", "train")
    np.testing.assert_array_equal(x, data.load("cifar10", "train", source="files", data_dir=str(data_dir))[0])
    assert (tmp_path / "cache" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (tmp_path / "cache" / "cifar-10-python.tar.gz").exists()
    assert Handler.requests == ["/cifar-10-python.tar.gz"]


def test_a_corrupt_download_is_detected_deleted_and_reported(mirror, tmp_path):
    target = mirror / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[-20] ^= 0xFF  # one flipped byte inside the compressed data
    target.write_bytes(bytes(raw))
    with pytest.raises(data.DataError) as e:
        data.load("fashion_mnist", "test")
    assert "t10k-labels-idx1-ubyte.gz is corrupt" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").rglob("t10k-labels*"))  # neither the file nor its .part


def test_a_truncated_download_is_detected_deleted_and_reported(mirror, tmp_path):
    Handler.cut = {"/fashion-mnist/train-labels-idx1-ubyte.gz"}
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz (is truncated|failed after)"):
        data.load("fashion_mnist", "test")
    assert not list((tmp_path / "cache").rglob("train-labels*"))
    Handler.cut = set()
    assert data.load("fashion_mnist", "test")[0].shape == (10_000, 28, 28, 1)  # a retry completes it


def test_offline_is_one_line_saying_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCJAX_DOWNLOAD", "1")  # downloads on, the only host a closed 127.0.0.1 port
    with socket_closed() as port:
        monkeypatch.setenv("HFCJAX_DATA_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HFCJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HFCJAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(data.DataError) as e:
        data.load("cifar10", "test")
    message = str(e.value)
    assert "cannot download" in message and "Offline?" in message and "HFCJAX_DATA_DIR=DIR" in message
    assert "\n" not in message and not (tmp_path / "cache" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setenv("HFCJAX_DOWNLOAD", "0")
    with pytest.raises(data.DataError, match=r"downloads are off \(HFCJAX_DOWNLOAD=0\)"):
        data.load("fashion_mnist", "test")


def socket_closed():
    """A context giving a port nothing listens on."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        yield port
    return closed()


def test_the_test_session_stops_at_once_without_data(tmp_path, root):
    if any((data.SYSTEM_DIR / spec.folder).is_dir() for spec in data.DATASETS.values()):
        pytest.skip(f"this machine has datasets in {data.SYSTEM_DIR}")
    with socket_closed() as port:
        env = {**os.environ, "HFCJAX_DATA_URL": f"http://127.0.0.1:{port}", "HFCJAX_CACHE_DIR": str(tmp_path / "c"),
               "HFCJAX_DATA_DIR": str(tmp_path / "empty"), "HFCJAX_DOWNLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_frequency.py", "-q", "-p", "no:cacheprovider"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "passed" not in out, out[-2000:]
    lines = [line for line in out.splitlines() if "hfcjax tests need the real datasets" in line]
    assert len(lines) == 1 and "Offline?" in lines[0], out[-2000:]


def test_published_checksums_are_the_ones_tfds_registers():
    """An independent copy of the archive checksums: tensorflow-datasets' url_checksums."""
    import tensorflow_datasets as tfds

    folder = Path(tfds.__file__).parent / "url_checksums"
    for name in ("fashion_mnist", "mnist"):
        registered = {Path(url).name: sha for url, _, sha, *_ in
                      (line.split("\t") for line in (folder / f"{name}.txt").read_text().splitlines() if line.strip())}
        ours = {file: checks[0].sha256 for file, checks in data.DATASETS[name].remote.files}
        assert ours == registered


def test_a_server_that_trickles_bytes_hits_the_overall_deadline(mirror, tmp_path, monkeypatch):
    """A byte every 0.2 s never trips the per-read timeout; the deadline of the whole file does."""
    Handler.trickle = {"/slow.bin"}
    url = f"{os.environ['HFCJAX_DATA_URL']}/slow.bin"
    monkeypatch.setenv(download.DEADLINE_VARIABLE, "1.5")
    dest = tmp_path / "out" / "slow.bin"
    with pytest.raises(download.DownloadError, match=r"took longer than 1.5s \(\d+ bytes so far.*partial file was "
                                                     r"deleted.*HFCJAX_DOWNLOAD_DEADLINE"):
        download.fetch(url, dest, [download.Check("0" * 64)], log=lambda m: None)
    assert list(dest.parent.iterdir()) == []
    monkeypatch.setenv(download.DEADLINE_VARIABLE, "soon")
    with pytest.raises(download.DownloadError, match=r"HFCJAX_DOWNLOAD_DEADLINE='soon' must be a number"):
        download.fetch(url, dest, [download.Check("0" * 64)], log=lambda m: None)


def test_the_fetch_command_keeps_a_file_only_with_the_sha256_given(mirror, tmp_path, run_cli):
    """python -m hfcjax.fetch (a user's URL, e.g. RobustBench weights from a mirror) against the server
    on 127.0.0.1: kept when its sha256 matches, deleted with one line when not, an existing good
    file kept without a download, a different one refused."""
    source = mirror / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    url = f"http://127.0.0.1:{os.environ['HFCJAX_DATA_URL'].rsplit(':', 1)[1]}/fashion-mnist/{source.name}"
    good, out = hashing.file_sha256(source), tmp_path / "got" / "labels.gz"
    code, _, err = run_cli(fetch.main, "--url", url, "--sha256", "0" * 64, "--out", out)
    assert code == 2 and err.startswith("error: download of") and "is corrupt" in err and err.count("\n") == 1
    assert not out.exists() and not list(out.parent.glob("*.part"))
    code, stdout, err = run_cli(fetch.main, "--url", url, "--sha256", good.upper(), "--out", out)
    assert code == 0 and "sha256 verified" in stdout and out.read_bytes() == source.read_bytes(), err
    requests = len(Handler.requests)
    code, stdout, _ = run_cli(fetch.main, "--url", url, "--sha256", good, "--out", out)
    assert code == 0 and "already there" in stdout and len(Handler.requests) == requests
    for args, message in ((["--sha256", "0" * 64, "--out", out], "exists with sha256"),
                          (["--sha256", "abc", "--out", out], "--sha256 must be the 64 hex digits"),
                          (["--sha256", good, "--out", tmp_path], "is a folder; name the file"),
                          (["--out", out], "--sha256")):
        code, _, err = run_cli(fetch.main, "--url", url, *args)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)
