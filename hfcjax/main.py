"""Command line: python -m hfcjax.main --config configs/<file>.py --workdir DIR [--config.KEY=VALUE]

Only parses flags and calls `train.train_and_evaluate`; bad input ends with one clear
message instead of a traceback. The flags live on their own FlagValues (not absl's global
FLAGS), so `main(argv)` can be called more than once in a process, as the tests do.
"""

import sys
from typing import Optional, Sequence

from hfcjax import cli


def define_flags(fv, argv: Sequence[str]) -> None:
    """This command's flags on the FlagValues `fv` (--config's KEY overrides are read from `argv`)."""
    from absl import flags
    from ml_collections import config_flags

    cli.define_distributed_flags(fv)
    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", flag_values=fv,
                                    lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.", flag_values=fv)
    flags.DEFINE_list("allow_config_change", [], "Config keys (dotted) a resumed run may change although they change "
                      "the results, e.g. learning_rate,adversarial.eps.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parses `argv` (default sys.argv) and trains; a user's error exits with one line."""
    from absl import flags, logging

    argv = list(sys.argv if argv is None else argv)
    fv = flags.FlagValues()
    with cli.flag_errors():  # the config file's --config.KEY overrides are checked as flags are defined
        define_flags(fv, argv)
    rest = cli.parse_flags(argv, fv)
    if len(rest) > 1:
        cli.fail(f"unexpected arguments: {rest[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    cli.start_distributed(fv)
    from hfcjax import train

    with cli.clear_errors():
        train.train_and_evaluate(cli.loaded_config(fv.config), fv.workdir, fv.allow_config_change)


def entry():
    """The `hfcjax-train` console script: the same as `python -m hfcjax.main`."""
    from hfcjax import backend

    backend.use_huge_pages()
    main()


if __name__ == "__main__":
    entry()
