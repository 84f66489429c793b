"""Tests read the real data in ../shared/data unless HFCJAX_DATA_DIR points elsewhere."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if "HFCJAX_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["HFCJAX_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_dir():
    path = os.environ.get("HFCJAX_DATA_DIR")
    assert path and Path(path).is_dir(), (
        "tests need the real datasets: set HFCJAX_DATA_DIR to a folder holding "
        "cifar-10-batches-py/ and fashion-mnist/ (see ../shared/data/README.md)")
    return Path(path)
