"""hfcjax.backend's one change to JAX itself: convolution gradients XLA:CPU runs in its fast
kernels inside loops (`backend.canonical_conv_gradients`), with JAX's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hfcjax.attacks  # noqa: F401  (installs the rule, as every attack's import does)
from hfcjax import backend

FAST_COMPILE = False  # the test below reads the optimized program


def conv(x, w, strides, padding, dilation, groups, numbers):
    return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers,
                                        feature_group_count=groups)


@settings(max_examples=12, deadline=None)
@given(strides=st.sampled_from([(1, 1), (2, 2), (1, 2)]), padding=st.sampled_from(["SAME", "VALID", ((2, 1), (0, 3))]),
       dilation=st.sampled_from([(1, 1), (2, 1)]), groups=st.sampled_from([1, 2]),
       layout=st.sampled_from(["flax", "torch"]), seed=st.integers(0, 2**16))
def test_input_gradient_equals_forward_mode(strides, padding, dilation, groups, layout, seed):
    """The input gradient (reverse mode: the transpose rule installed here) equals the one forward
    mode gives (JVPs of the convolution itself: no transpose rule involved), for flax's NHWC/HWIO
    and PyTorch's NCHW/OIHW layouts, strided, padded, dilated and grouped convolutions."""
    rng = np.random.default_rng(seed)
    c_in, c_out = 4, 6
    if layout == "flax":
        x, w, numbers = rng.normal(size=(2, 9, 8, c_in)), rng.normal(size=(3, 2, c_in // groups, c_out)), \
            ("NHWC", "HWIO", "NHWC")
    else:
        x, w, numbers = rng.normal(size=(2, c_in, 9, 8)), rng.normal(size=(c_out, c_in // groups, 3, 2)), \
            ("NCHW", "OIHW", "NCHW")
    x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    out = jax.eval_shape(lambda z: conv(z, w, strides, padding, dilation, groups, numbers), x)
    cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    loss = lambda z: jnp.sum(conv(z, w, strides, padding, dilation, groups, numbers) * cotangent)
    np.testing.assert_allclose(jax.grad(loss)(x), jax.jacfwd(loss)(x), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is for XLA:CPU")
def test_gradients_in_a_rolled_loop_compile_to_canonical_convolutions():
    """A PGD-like rolled loop over a two-layer conv net: with the installed rule no convolution in
    the compiled program reads a feature-swapped kernel (XLA:CPU's slow path); with JAX's own it does,
    and attacks unroll their loops on a CPU again, under the memory-optimized scheduler."""
    assert backend.canonical_conv_gradients()
    w1 = jnp.ones((3, 3, 3, 8), jnp.float32) / 27
    w2 = jnp.ones((3, 3, 8, 4), jnp.float32) / 72

    def loss(z, a, b):
        h = jax.nn.relu(jax.lax.conv_general_dilated(z, a, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return jnp.sum(jax.lax.conv_general_dilated(h, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

    def attack(x, a, b):
        return jax.lax.fori_loop(0, 3, lambda i, z: z + 0.01 * jnp.sign(jax.grad(loss)(z, a, b)), x, unroll=1)

    def compiled_text():
        jax.clear_caches()  # traced anew, under the rule in force now
        return jax.jit(attack).lower(jnp.zeros((2, 8, 8, 3)), w1, w2).compile().as_text()

    assert "01oi" not in compiled_text()
    assert backend.pgd_unroll() == 1 and backend.eval_compiler_options() is None  # rolled: XLA's default scheduler
    try:
        assert not backend.canonical_conv_gradients(False)  # JAX's own rule
        assert "01oi" in compiled_text()
        assert backend.pgd_unroll() is True  # unrolled on a CPU, with the memory-optimized scheduler
        assert backend.eval_compiler_options() == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    finally:
        assert backend.canonical_conv_gradients()
    assert "01oi" not in compiled_text()


LONE_CONV = """
import os, sys
import hfcjax, jax, jax.numpy as jnp
x, w = jnp.ones((8, 32, 32, 3)), jnp.ones((5, 5, 3, 32))  # YNNPACK takes no tiny convolution
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(os.environ.get("XLA_FLAGS", ""), "ynn_fusion" in jax.jit(conv).lower(x, w).compile().as_text())
"""


@pytest.mark.parametrize("env, applied", [({}, True), ({"HFCJAX_XLA_CPU_TUNING": "0"}, False)])
def test_lone_convolutions_leave_ynnpack_when_hfcjax_is_imported(env, applied):
    """Importing hfcjax (before JAX starts) moves a convolution whose result goes to memory out
    of YNNPACK's one-thread fusion; opted out, jaxlib's default puts it there (which is what the
    choice corrects: if a jaxlib stops doing so, this test says the flag is no longer needed)."""
    import os
    import subprocess
    import sys

    child = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HFCJAX_XLA_CPU_TUNING")}
    out = subprocess.run([sys.executable, "-c", LONE_CONV], env={**child, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert (backend.YNN_NO_LONE_CONVOLUTIONS in out) == applied
    assert out[-1] == str(not applied)


def test_convolution_flag_respects_the_user_and_late_calls(monkeypatch):
    """XLA_FLAGS that already choose YNN fusion types are left alone; once JAX's backends exist
    (as in this process) nothing is changed; a jaxlib release not known to have the flag gets none."""
    from importlib import metadata

    monkeypatch.setenv("XLA_FLAGS", f"{backend.YNN_FLAG}=")
    assert not backend.cpu_convolutions_threaded()
    assert backend.YNN_NO_LONE_CONVOLUTIONS not in __import__("os").environ["XLA_FLAGS"]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    jax.devices()
    assert not backend.cpu_convolutions_threaded()  # too late in this process
    monkeypatch.setattr("jax._src.xla_bridge._backends", {})
    monkeypatch.setattr(metadata, "version", lambda name: "9.1.0")
    assert not backend.cpu_convolutions_threaded()
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.7")
    assert backend.cpu_convolutions_threaded()
    assert __import__("os").environ["XLA_FLAGS"].split() == ["--xla_cpu_multi_thread_eigen=false",
                                                             backend.YNN_NO_LONE_CONVOLUTIONS]


@pytest.mark.skipif(not backend.is_cpu(), reason="the unrolled scan is a CPU choice")
def test_a_cifar_sized_heat_map_runs_unrolled_on_a_cpu():
    """A 32x32 image's one-call heat map (514 bases, 65 chunks of 8) unrolls its scan on a CPU
    (rolled it ran 1.8x slower); a far larger one stays rolled (bounded program)."""
    from hfcjax import heatmap

    chunks = len(heatmap.padded_ids(len(heatmap.basis_frequencies(32, 32)[0]), 8)) // 8
    assert chunks == 65 and backend.heatmap_unroll(chunks) is True
    assert backend.heatmap_unroll(10_000) == 1
