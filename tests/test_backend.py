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
    the compiled program reads a feature-swapped kernel (XLA:CPU's slow path); with JAX's own it does."""
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
    try:
        assert not backend.canonical_conv_gradients(False)  # JAX's own rule
        assert "01oi" in compiled_text()
    finally:
        assert backend.canonical_conv_gradients()
    assert "01oi" not in compiled_text()
