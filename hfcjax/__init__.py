"""hfcjax: high-frequency components and CNN generalization (Wang et al., CVPR 2020) in JAX/Flax."""

__version__ = "0.1.0"
