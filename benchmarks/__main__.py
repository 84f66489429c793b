"""python -m benchmarks [--only split,attacks,beyond,train,processes,autoattack,evaluators,xla_cpu] [--out docs/benchmarks_<cpu|gpu>.md]

Runs every benchmark, prints one table of measurements and ratios against baselines
measured in the same run, and writes it (with the machine) to the output Markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

from benchmarks import common
from hfcjax import reports


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="split,attacks,beyond,train")
    parser.add_argument("--out", default=None, help="default: docs/benchmarks_<platform>.md")
    args = parser.parse_args()
    wanted = args.only.split(",")
    rows = []
    if "split" in wanted:
        from benchmarks import bench_split

        rows += print_rows(bench_split.run())
    if "attacks" in wanted:
        from benchmarks import bench_attacks

        rows += print_rows(bench_attacks.run())
        rows += print_rows(bench_attacks.rolled_rows())
    if "beyond" in wanted:
        from benchmarks import bench_attacks

        rows += print_rows(bench_attacks.beyond_rows())
    if "train" in wanted:
        from benchmarks import bench_train

        with tempfile.TemporaryDirectory() as tmp:
            rows += print_rows(bench_train.run(tmp))
    if "autoattack" in wanted:
        from benchmarks import bench_autoattack

        rows += print_rows(bench_autoattack.attack_rows())
        rows += print_rows(bench_autoattack.run())
    if "evaluators" in wanted:
        from benchmarks import bench_evaluators

        rows += print_rows(bench_evaluators.run())
    if "processes" in wanted:
        from benchmarks import bench_processes

        rows += print_rows(bench_processes.run(common.on_gpu()))
    if "xla_cpu" in wanted:
        from benchmarks import bench_xla_cpu

        rows += print_rows(bench_xla_cpu.run())
    table = render(rows)
    print("\n" + table)
    out = Path(args.out or f"docs/benchmarks_{'gpu' if common.on_gpu() else 'cpu'}.md")
    reports.atomic_write(out, table + "\n")
    print(f"written to {out}")


def print_rows(rows):
    for name, value, unit, ratio, note in rows:
        print(f"{name}: {value:,.1f} {unit}; ratio {ratio:.2f} ({note})", flush=True)
    return rows


def render(rows) -> str:
    table = reports.markdown_table(["measurement", "value", "unit", "ratio", "ratio means"],
                                   [[name, f"{value:,.1f}", unit, f"{ratio:.2f}", note]
                                    for name, value, unit, ratio, note in rows])
    return "\n".join([f"Machine: {common.machine()}",
                      f"Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "", table])


if __name__ == "__main__":
    from hfcjax import backend

    backend.use_huge_pages()
    main()
