"""hfcjax.reproduce plans every experiment validly and runs them on tiny real data; the
Colab notebook executes end to end."""

import json
import subprocess
import sys

import pytest

from hfcjax import checkpoints, reproduce

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)

TINY_EVAL = dict(evaluation=dict(num_examples=20, batch_size=20, rhos=(0.0, 1.0), recalibrate_examples=200),
                 robustness=dict(pgd_steps=2, strong_restarts=1, square_queries=5))


@pytest.mark.parametrize("experiment", sorted(reproduce.EXPERIMENTS))
def test_every_experiment_plans_valid_distinct_runs(experiment, tiny_config):
    runs = reproduce.plan(experiment, tiny_config())
    names = [name for name, _ in runs]
    assert len(names) == len(set(names)) >= 2
    configs = [c.to_dict() for _, c in runs]
    assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1:])


def test_plan_details_and_errors(tiny_config):
    fig3 = dict(reproduce.plan("fig3", tiny_config(num_epochs=2)))
    assert fig3["shuffle"].num_epochs == 6 and fig3["shuffle"].shuffle_labels
    assert dict(reproduce.plan("fig5", tiny_config()))["adversarial"].adversarial.enabled
    with pytest.raises(ValueError, match="unknown experiment 'table9'"):
        reproduce.plan("table9", tiny_config())
    with pytest.raises(ValueError, match=r"not runs of table1.*low_r4"):
        reproduce.plan("table1", tiny_config(), only=["low_r5"])


def test_table1_runs_and_reports(tmp_path, tiny_config):
    out = reproduce.reproduce("table1", tiny_config(num_epochs=1), tmp_path, only=["low_r4", "high_r16"])
    assert [r["run"] for r in out["rows"]] == ["low_r4", "high_r16"]
    report = (tmp_path / "report.md").read_text()
    assert "| low_r4 | 1 |" in report and "table1_train.png" in report
    for name in ("table1_train.png", "table1_test.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report.json").read_text())[1]["run"] == "high_r16"


def test_table2_trains_and_evaluates(tmp_path, tiny_config):
    reproduce.reproduce("table2", tiny_config(num_epochs=1), tmp_path, only=["natural"], eval_sections=TINY_EVAL)
    report = (tmp_path / "report.md").read_text()
    assert "### natural" in report and "| rho=1 |" in report
    assert (checkpoints.RunDir(tmp_path / "natural").eval / "robustness.json").exists()


def test_cli_runs_an_experiment(tmp_path, root, subprocess_env):
    args = [sys.executable, "-m", "hfcjax.reproduce", "--experiment", "fig5", "--only", "vanilla,mixup",
            "--config", str(root / "configs" / "fashion_mnist_cnn.py"), "--workdir", str(tmp_path),
            "--config.model=lenet", "--config.train_subset=200", "--config.test_subset=100", "--config.eval_train_subset=100",
            "--config.num_epochs=1", "--config.batch_size=50", "--config.eval_batch_size=100", "--config.draw_figures=False"]
    proc = subprocess.run(args, cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mixup | 1 |" in (tmp_path / "report.md").read_text()
    bad = subprocess.run(args[:4] + ["table9"] + args[5:], cwd=root, env=subprocess_env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "table9" in bad.stderr and "Traceback" not in bad.stderr


def execute_notebook(root, name, monkeypatch, **env):
    """Runs notebooks/`name` top to bottom (tiny settings) and returns its code cells' outputs,
    after checking that none is an error and that it drew at least one PNG."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(root / "notebooks" / name, as_version=4)
    for key, value in {"HFCJAX_NOTEBOOK_TINY": "1", **env}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}
                            ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    return nb, outputs


def test_notebook_executes(tmp_path, root, monkeypatch):
    execute_notebook(root, "hfcjax_colab.ipynb", monkeypatch, HFCJAX_NOTEBOOK_WORKDIR=str(tmp_path / "run"))
    assert (checkpoints.RunDir(tmp_path / "run").eval / "robustness.md").exists()


def test_your_own_model_notebook_executes(tmp_path, root, monkeypatch):
    """The second notebook: a Flax model defined in the notebook (NCHW, mean/std), trained with optax,
    analysed through evaluate.analyse_model."""
    nb, outputs = execute_notebook(root, "your_own_model.ipynb", monkeypatch,
                                   HFCJAX_NOTEBOOK_OUT=str(tmp_path / "report"))
    assert "from hfcjax import" in nb.cells[3].source and "class SmallCNN(nn.Module)" in nb.cells[3].source
    text = "".join(o.get("text", "") for o in outputs)
    accuracy = float(text.split("test accuracy on 1000 images: ")[1].split()[0])
    assert accuracy > 0.5  # it learned something in 60 steps
    saved = json.loads((tmp_path / "report" / "robustness.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["rho=0", "rho=0.5", "rho=1"]
    assert saved["rows"][0]["clean"] > 0.5 and saved["rows"][2]["roughness"] < saved["rows"][0]["roughness"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", ["hfcjax_colab.ipynb", "your_own_model.ipynb"])
def test_notebook_install_cell_installs_from_the_repository(name, tmp_path, root, monkeypatch):
    """The first cell, run as in Colab (a google.colab module present) with HFCJAX_REPO a git URL of this
    repository, installs hfcjax from it (pip's target redirected to a temporary folder, no dependencies);
    without HFCJAX_REPO it stops with one line, never `pip install hfcjax` from PyPI."""
    import shutil
    import types

    nbformat = pytest.importorskip("nbformat")
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a clone of the repository")
    cell = nbformat.read(root / "notebooks" / name, as_version=4).cells[1].source
    install = cell[:cell.index('subprocess.run([sys.executable, "-m", "pip", "install", "-q", HFCJAX_REPO], check=True)')
                   + len('subprocess.run([sys.executable, "-m", "pip", "install", "-q", HFCJAX_REPO], check=True)')]
    assert "pip install hfcjax" not in cell and "!pip" not in cell
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.delenv("HFCJAX_REPO", raising=False)
    with pytest.raises(SystemExit, match="set HFCJAX_REPO .* hfcjax is not on PyPI"):
        exec(install, {})
    monkeypatch.setenv("HFCJAX_REPO", f"git+file://{root}")
    monkeypatch.setenv("PIP_TARGET", str(tmp_path / "site"))
    monkeypatch.setenv("PIP_NO_DEPS", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # hermetic: build with this venv's setuptools, fetch nothing
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's quirk: "0" turns build isolation off
    exec(install, {})
    assert (tmp_path / "site" / "hfcjax" / "evaluate.py").is_file()
