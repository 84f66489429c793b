"""Shared test fixtures. Tests read the real data in ../shared/data unless HFCJAX_DATA_DIR
points elsewhere; no test module imports another, they share what is here."""

import collections
import collections.abc
import contextlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if "HFCJAX_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["HFCJAX_DATA_DIR"] = str(SHARED_DATA)
# One persistent compilation cache for the whole suite and the processes it starts (set
# before JAX is imported, inherited by subprocesses): the tiny models and attack grids that
# many tests compile alike are compiled once. It never changes a number (same executables);
# HFCJAX_TEST_JAX_CACHE='' turns it off.
_CACHE = os.environ.setdefault("HFCJAX_TEST_JAX_CACHE", str(ROOT / ".jax_cache"))
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the small ones add up


def _threads_per_worker() -> int:
    """The cores each pytest-xdist worker may use (all of them when not under xdist)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


# Under xdist, each worker (and every process it starts) gets its share of the cores for its
# thread pools: XLA:CPU's Eigen pool, torch's OpenMP threads, numpy's BLAS. Left at their
# defaults, every process sizes its pools to the whole machine, and the spinning OpenMP
# threads of one worker starve the other: two AutoAttack parity tests side by side on 2 cores
# took 523 s, 41 s with one thread each. Thread counts change no assertion's tolerance.
if "PYTEST_XDIST_WORKER" in os.environ and "HFCJAX_TEST_THREADS" not in os.environ:
    _n = str(_threads_per_worker())
    os.environ["HFCJAX_TEST_THREADS"] = _n
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _n)
    _xla = os.environ.get("XLA_FLAGS", "")
    if _n == "1" and "xla_cpu_multi_thread_eigen" not in _xla:
        os.environ["XLA_FLAGS"] = f"{_xla} --xla_cpu_multi_thread_eigen=false".strip()


# The modules that take longest (worker seconds on CI's 2 cores, empty compilation cache), run
# first, longest first: with one module per worker at a time (--dist loadfile), a long module
# started last leaves the other worker idle at the end. pytest-xdist reorders modules by their
# number of tests unless told not to (--no-loadscope-reorder in pyproject's addopts): with its
# order, test_multiprocess (120 s) ran last and the workers finished 36 s apart.
LONGEST_FIRST = ("test_train", "test_attacks", "test_evaluate", "test_multiprocess", "test_reproduce", "test_models",
                 "test_torch_weights", "test_integrity", "test_evaluators", "test_autoattack_parity", "test_frequency",
                 "test_external", "test_heatmap", "test_download", "test_square")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module's order kept


def pytest_sessionstart(session):
    """The tests need the real datasets: found in a data folder, or downloaded once into the
    cache (`hfcjax.data.locate`); otherwise the session stops here with one line."""
    from hfcjax import data

    try:
        folders = {data.locate(name).parent for name in ("fashion_mnist", "cifar10")}
    except data.DataError as e:
        raise pytest.UsageError(f"hfcjax tests need the real datasets: {e}")
    if "HFCJAX_DATA_DIR" not in os.environ and len(folders) == 1:
        os.environ["HFCJAX_DATA_DIR"] = str(folders.pop())  # the cache, after a download


@contextlib.contextmanager
def _optimizations(disabled: bool):
    """XLA's slow optimization passes off (or on) in this process and, through the
    environment, in every process it starts, so in-process and subprocess numbers agree."""
    import jax

    saved, saved_env = jax.config.read("jax_disable_most_optimizations"), os.environ.get(_NO_OPT)
    jax.config.update("jax_disable_most_optimizations", disabled)
    if disabled:
        os.environ[_NO_OPT] = "1"
    else:
        os.environ.pop(_NO_OPT, None)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", saved)
        if saved_env is None:
            os.environ.pop(_NO_OPT, None)
        else:
            os.environ[_NO_OPT] = saved_env


_NO_OPT = "JAX_DISABLE_MOST_OPTIMIZATIONS"


@pytest.fixture(autouse=True, scope="module")
def _fast_compile(request):
    """Modules that set ``FAST_COMPILE = True`` (compilation is most of their time, execution
    little) run with XLA's slow optimization passes off, module fixtures and the processes
    they start included: the same arithmetic up to rounding, and every comparison inside the
    module sees one setting (JAX's in-memory caches do not key on it, so one module cannot
    mix both). Measured: test_models + test_attacks 263 -> 206 s, test_evaluators 54 -> 41 s."""
    with _optimizations(getattr(request.module, "FAST_COMPILE", False)):
        yield


@pytest.fixture(scope="session")
def data_dir():
    path = os.environ.get("HFCJAX_DATA_DIR")
    assert path and Path(path).is_dir(), (
        "tests need the real datasets: set HFCJAX_DATA_DIR to a folder holding "
        "cifar-10-batches-py/ and fashion-mnist/ (see ../shared/data/README.md)")
    return Path(path)


@pytest.fixture(scope="session")
def root():
    """The repository root (where `python -m hfcjax...` runs)."""
    return ROOT


class _ProcessEnv(collections.abc.Mapping):
    """This process's environment as it is when read (so a module's or test's optimization
    setting reaches the processes it starts), with this checkout on PYTHONPATH."""

    def _now(self):
        return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def __getitem__(self, key):
        return self._now()[key]

    def __iter__(self):
        return iter(self._now())

    def __len__(self):
        return len(self._now())


@pytest.fixture(scope="session")
def subprocess_env():
    """The environment for `python -m hfcjax...` subprocesses: this checkout on PYTHONPATH."""
    return _ProcessEnv()


def _tiny_config(**overrides):
    """The Fashion-MNIST config with LeNet on small real subsets; 'a.b' keys reach nested dicts."""
    from hfcjax import config as config_lib

    c = config_lib.default()
    c.dataset, c.model = "fashion_mnist", "lenet"  # the MNIST CNN's _PlainCNN at a tenth of its FLOPs
    c.train_subset, c.test_subset, c.eval_train_subset = 600, 200, 200
    c.batch_size, c.eval_batch_size, c.num_epochs = 40, 200, 2
    c.learning_rate, c.log_every_steps = 3e-3, 5
    c.draw_figures = False  # about 2 s of matplotlib per run; the tests of the figures turn them on
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: tiny_config(**overrides) -> ConfigDict."""
    return _tiny_config


TINY_EVAL = {"evaluation": dict(rhos=(0.0, 1.0), num_examples=40, batch_size=20, recalibrate_examples=200),
             "robustness": dict(eps=(0.05, 0.1), pgd_steps=3, strong_restarts=2, square_queries=10)}


def _tiny_eval(**changes):
    """Evaluation sections for `evaluate.evaluate(..., **sections)`: small settings, with
    `changes` ({section: {key: value}}) merged in."""
    out = {name: dict(values) for name, values in TINY_EVAL.items()}
    for name, values in changes.items():
        out.setdefault(name, {}).update(values)
    return out


@pytest.fixture(scope="session")
def tiny_eval():
    """A factory: tiny_eval(robustness={"eps": (0.1,)}, ...) -> {section: {key: value}}."""
    return _tiny_eval


@pytest.fixture
def run_cli(capsys):
    """Runs an entry point's ``main(argv)`` in this process: run_cli(main, *args) -> (exit
    code, stdout, stderr)."""

    def run(main, *args):
        try:
            main(["prog", *map(str, args)])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _reference_split(images, radius, inclusive=True):
    """Section 3.1 literally: per image and channel, fftshift, disk mask, inverse, real part."""
    images = np.asarray(images, np.float64)
    low = np.zeros_like(images)
    high = np.zeros_like(images)
    n, h, w, c = images.shape
    ci, cj = h // 2, w // 2
    mask = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            d = np.sqrt((i - ci) ** 2 + (j - cj) ** 2)
            mask[i, j] = d <= radius if inclusive else d < radius
    for k in range(n):
        for ch in range(c):
            z = np.fft.fftshift(np.fft.fft2(images[k, :, :, ch]))
            low[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(z * mask)))
            high[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(z * (1 - mask))))
    return low, high, mask


@pytest.fixture(scope="session")
def reference_split():
    """The numpy reference of the paper's split: reference_split(images, r, inclusive) -> (low, high, mask)."""
    return _reference_split


class _CompileCounter(logging.Handler):
    PATTERN = re.compile(r"Compiling (?:jit\()?([\w<>.-]+)")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.counts = collections.Counter()

    def emit(self, record):
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.counts[match.group(1)] += 1


@pytest.fixture
def count_compiles():
    """A context manager counting XLA compilations by function name, through JAX's public
    compile logging (`jax.log_compiles`): ``with count_compiles() as counts: ...; counts['step']``."""
    import jax

    @contextlib.contextmanager
    def counting():
        handler = _CompileCounter()
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            with jax.log_compiles():
                yield handler.counts
        finally:
            logger.removeHandler(handler)

    return counting


