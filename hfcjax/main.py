"""Command line: python -m hfcjax.main --config configs/<file>.py --workdir DIR [--config.KEY=VALUE]

Only parses flags and calls `train.train_and_evaluate`; bad input ends with one clear
message instead of a traceback.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hfcjax import cli

FLAGS = flags.FLAGS
cli.define_distributed_flags()
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_list("allow_config_change", [], "Config keys (dotted) a resumed run may change although they change "
                  "the results, e.g. learning_rate,adversarial.eps.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    cli.start_distributed()
    from hfcjax import train

    with cli.clear_errors():
        train.train_and_evaluate(cli.loaded_config(FLAGS.config), FLAGS.workdir, FLAGS.allow_config_change)


def entry():
    """The `hfcjax-train` console script: the same as `python -m hfcjax.main`."""
    from hfcjax import backend

    backend.use_huge_pages()
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry()
