"""hfcjax: high-frequency components and CNN generalization (Wang et al., CVPR 2020) in JAX/Flax."""

__version__ = "0.1.0"

from hfcjax import backend as _backend

_backend.cpu_convolutions_threaded()  # XLA:CPU's threaded convolutions (backend.py, choice 0): before JAX starts
