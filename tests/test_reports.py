"""hfcjax.reports: one column description, three formats that agree; atomic writes."""

import csv
import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from hfcjax import reports

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def columns(n):
    return ([reports.field("name", "model", "model", fmt=str)]
            + [reports.field("acc", f"acc {i}", f"acc_{i}", index=i) for i in range(n)]
            + [reports.field("note", None), reports.field("hidden", "hidden", None)])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.text("abc", min_size=1, max_size=5), st.lists(finite, min_size=2, max_size=2),
                          st.one_of(st.none(), finite)), min_size=1, max_size=5))
def test_csv_and_markdown_render_the_same_rows(data):
    rows = [{"name": n, "acc": acc, "note": note, "hidden": 1.0} for n, acc, note in data]
    cols = columns(2)
    parsed = list(csv.DictReader(io.StringIO(reports.render_csv(rows, cols))))
    assert list(parsed[0]) == ["model", "acc_0", "acc_1", "note"]  # no CSV name: not in the CSV
    for row, line in zip(rows, parsed):
        assert [float(line["acc_0"]), float(line["acc_1"])] == row["acc"]  # full precision
        if row["note"] is None:
            assert line["note"] == ""
        else:
            assert float(line["note"]) == row["note"]
    md = reports.render_markdown(rows, cols).splitlines()
    assert md[0] == "| model | acc 0 | acc 1 | hidden |" and md[1] == "|---|---|---|---|"
    for row, line in zip(rows, md[2:]):
        assert line == f"| {row['name']} | {row['acc'][0]:.3f} | {row['acc'][1]:.3f} | 1.000 |"


def test_write_table_writes_three_agreeing_files(tmp_path):
    rows = [{"name": "rho=0", "acc": [0.5, 0.25], "note": None, "hidden": 2.0}]
    table = reports.write_table(tmp_path / "out", "t", rows, columns(2), {"rows": rows})
    assert (tmp_path / "out" / "t.md").read_text() == table + "\n"
    assert json.loads((tmp_path / "out" / "t.json").read_text())["rows"] == rows
    assert "rho=0,0.5,0.25," in (tmp_path / "out" / "t.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.csv", "t.json", "t.md"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a" / "f.txt"
    reports.atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with reports.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
    reports.atomic_write(path, b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"


def test_markdown_table_formats_floats_and_keeps_strings():
    assert reports.markdown_table(["a", "b"], [[0.12345, "x"], [3, None]]).splitlines()[2:] == [
        "| 0.123 | x |", "| 3 |  |"]
