"""The ``fastcarry`` command line: registers the subcommands, parses, starts TensorFlow quietly, runs one.

Each subcommand is a module of ``fastcarry.tools`` with ``add_parser(subparsers)``
and ``run(args)``: ``demo``, ``check``, ``bench``, ``profile``, ``tune``, ``doctor``.
Arguments are parsed before TensorFlow is imported (``--help`` and usage
errors answer at once; those modules import TensorFlow only when they run).
"""

import argparse
import os
import re
import sys
import tempfile

from fastcarry.tools import bench, check, demo, doctor, profile, tune

COMMANDS = (check, bench, profile, demo, tune, doctor)


def parser():
    """The ``fastcarry`` parser: one subparser per module of ``COMMANDS``, whose ``run`` it calls."""
    from fastcarry import __version__

    top = argparse.ArgumentParser(prog="fastcarry", description="Fast, exact RNNs under XLA.")
    top.add_argument("--version", action="version", version=f"fastcarry {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return top


# What TensorFlow's C++ runtime prints while it starts: absl logs everything to
# stderr until it is initialised (TF_CPP_MIN_LOG_LEVEL does not apply yet), and
# a CPU-only machine hears about the GPU it does not have. Nothing else is
# dropped: any other line said during the start is passed on.
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions:")


def start_tensorflow():
    """Imports TensorFlow quietly: log level 2 (errors only) unless the user set one, and no start-up lines.

    ``TF_CPP_MIN_LOG_LEVEL`` must be set before TensorFlow loads. If the user
    set it, nothing is filtered. Otherwise file descriptor 2 is pointed at a
    temporary file while TensorFlow loads and finds its devices, and every line
    said then that is not ``_START_UP_NOISE`` is written to stderr afterwards.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow as tf

        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as said:
        os.dup2(said.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where the CUDA probe speaks
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            said.seek(0)
            for line in said.read().decode(errors="replace").splitlines():
                if not _START_UP_NOISE.search(line):
                    print(line, file=sys.stderr)
    return tf


def main(argv=None):
    args = parser().parse_args(argv)
    start_tensorflow()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
