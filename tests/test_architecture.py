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
    """(name, path) of every module: a package (hfcjax/evaluators/) counts as one, all its files."""
    found = [(p.stem, p) for p in (root / "hfcjax").glob("*.py") if p.stem != "__init__"]
    found += [(p.parent.name, p) for p in (root / "hfcjax").glob("*/*.py")]
    return sorted(found)


def test_every_module_is_documented(root):
    assert {name for name, _ in modules(root)} == set(layers(root))


def test_imports_only_go_down(root):
    table = layers(root)
    for name, path in modules(root):
        for imported in hfcjax_imports(path) - {name}:
            assert table[imported] < table[name], f"{path} (layer {table[name]}) imports " \
                                                  f"{imported} (layer {table[imported]})"


def test_no_file_over_350_lines_and_no_function_over_60(root):
    for _, path in modules(root):
        text = path.read_text()
        assert text.count("\n") <= 350, f"{path} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = [n for n in ast.walk(node) if hasattr(n, "lineno")]
                lines = {n.lineno for n in body if not isinstance(n, ast.Constant)}  # code lines, not docstrings
                assert len(lines) <= 60, f"{path}:{node.lineno} {node.name} has {len(lines)} lines of code"


def test_run_directory_names_and_metric_names_have_one_owner(root):
    """Folder and item names of the run directory appear only in checkpoints.py; metric
    names are never parsed ("_r" splits) or rebuilt as f-strings outside measure.py."""
    for name, path in modules(root):
        text = path.read_text()
        if name != "checkpoints":
            for folder in ('"checkpoints"', '"metrics.jsonl"', '"events"', '"figures"', '"eval"', '"history"'):
                assert folder not in text, f"{path.name} names {folder}"
        if name != "measure":
            assert 'split("_r")' not in text and not re.search(r'f"\{split\}_|"(train|test)_acc"', text), path.name
