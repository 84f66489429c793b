"""docs/architecture.md is true: every hfcjax module is in its table, imports only modules of
lower layers, and the names owned by one module are not spelled out elsewhere."""

import ast
import re


def layers(root):
    table = {}
    for line in (root / "docs" / "architecture.md").read_text().splitlines():
        match = re.match(r"\| (\w+) \| (\d+) \|", line)
        if match:
            table[match.group(1)] = int(match.group(2))
    return table


def hfcjax_imports(path):
    """Names of hfcjax modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "hfcjax":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfcjax."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("hfcjax.")}
    return found


def modules(root):
    return sorted(p for p in (root / "hfcjax").glob("*.py") if p.stem != "__init__")


def test_every_module_is_documented(root):
    assert {p.stem for p in modules(root)} == set(layers(root))


def test_imports_only_go_down(root):
    table = layers(root)
    for path in modules(root):
        for imported in hfcjax_imports(path):
            assert table[imported] < table[path.stem], f"{path.stem} (layer {table[path.stem]}) imports " \
                                                       f"{imported} (layer {table[imported]})"


def test_run_directory_names_and_metric_names_have_one_owner(root):
    """Folder and item names of the run directory appear only in checkpoints.py; metric
    names are never parsed ("_r" splits) or rebuilt as f-strings outside measure.py."""
    for path in modules(root):
        text = path.read_text()
        if path.stem != "checkpoints":
            for name in ('"checkpoints"', '"metrics.jsonl"', '"events"', '"figures"', '"eval"', '"history"'):
                assert name not in text, f"{path.name} names {name}"
        if path.stem != "measure":
            assert 'split("_r")' not in text and not re.search(r'f"\{split\}_|"(train|test)_acc"', text), path.name
