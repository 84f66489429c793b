"""The MNIST CNN (conv5x5-32, pool, conv5x5-64, pool, dense 1024) on the full Fashion-MNIST,
3 epochs with Adam 1e-4: about 6 minutes on a 2-core CPU including the per-epoch LFC/HFC tracking
(on the first 10,000 training images and all 10,000 test images).
Radii 4/8/12/16 as in the paper (28x28 images: r=16 keeps almost everything)."""

from hfcjax import config as base


def get_config():
    c = base.default()
    c.dataset = "fashion_mnist"
    c.model = "mnist_cnn"
    c.num_epochs = 3
    c.eval_batch_size = 1000
    c.eval_train_subset = 10000  # LFC/HFC tracking on the first 10k training images keeps an epoch ~2 min
    c.log_every_steps = 100
    c.evaluation.num_examples = 500  # hfcjax.evaluate / reproduce table2: the rho grid on the first 500 test images
    return c
