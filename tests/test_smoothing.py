"""hfcjax.smoothing (Eq. 3) against a direct loop over the kernel's entries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import models, smoothing

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


def loop_smooth(kernel, rho):
    """Eq. 3 literally: each weight plus rho times its 8 neighbours, borders duplicated."""
    h, w, cin, cout = kernel.shape
    out = np.array(kernel, np.float64)
    for i in range(h):
        for j in range(w):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di, dj) == (0, 0):
                        continue
                    ii, jj = min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)
                    out[i, j] += rho * kernel[ii, jj]
    return out


@pytest.mark.parametrize("shape", [(3, 3, 3, 16), (5, 5, 1, 6), (1, 1, 2, 2), (2, 4, 3, 5), (7, 7, 3, 4)])
@pytest.mark.parametrize("rho", [0.0, 0.1, 0.25, 1.0])
def test_smooth_kernel_matches_loop(shape, rho):
    kernel = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(smoothing.smooth_kernel(kernel, rho), loop_smooth(kernel, rho), rtol=1e-5, atol=1e-5)


def test_constant_kernel_scales_by_one_plus_eight_rho():
    np.testing.assert_allclose(smoothing.smooth_kernel(np.ones((3, 3, 1, 1)), 0.5), 5.0)


def test_smooth_params_changes_only_the_selected_kernels():
    model = models.create_model("resnet18", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    out = smoothing.smooth_params(params, 1.0)
    flat_in = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_out = dict(jax.tree_util.tree_flatten_with_path(out)[0])
    changed = [jax.tree_util.keystr(k) for k, v in flat_in if not np.array_equal(v, flat_out[k])]
    assert changed == ["['stem']['kernel']"]
    np.testing.assert_allclose(out["stem"]["kernel"], loop_smooth(np.asarray(params["stem"]["kernel"]), 1.0),
                               rtol=1e-5, atol=1e-6)
    same = smoothing.smooth_params(params, 0.0)
    jax.tree.map(np.testing.assert_array_equal, params, same)
    both = smoothing.smooth_params(params, 0.5, layers=[r"^stem/kernel$", r"stage1_block1/Conv_0/kernel"])
    assert not np.array_equal(both["stage1_block1"]["Conv_0"]["kernel"], params["stage1_block1"]["Conv_0"]["kernel"])


def test_rho_can_be_traced():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
    out = jax.jit(smoothing.smooth_kernel)(kernel, jnp.float32(0.25))
    np.testing.assert_allclose(out, loop_smooth(kernel, 0.25), rtol=1e-5, atol=1e-5)


def test_smoothing_lowers_roughness():
    kernel = np.random.default_rng(2).normal(size=(5, 5, 3, 8)).astype(np.float32)
    values = [float(smoothing.roughness(smoothing.smooth_kernel(kernel, r))) for r in (0, 0.1, 0.25, 0.5, 1.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert float(smoothing.roughness(np.ones((3, 3, 1, 1)))) == 0.0


def test_bad_inputs():
    params = {"stem": {"kernel": jnp.zeros((3, 3, 1, 2))}, "dense": {"kernel": jnp.zeros((4, 2))}}
    with pytest.raises(ValueError, match=r"no convolution kernel matches \['\^conv9'\].*stem/kernel"):
        smoothing.smooth_params(params, 0.5, layers=["^conv9"])
    with pytest.raises(ValueError, match="HWIO"):
        smoothing.smooth_kernel(np.zeros((3, 3)), 0.1)
