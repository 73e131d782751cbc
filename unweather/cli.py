"""The `unweather` command line: one entry point, one subcommand per job.

Each area of the package owns its subcommands in a small `cli` module with a
`register(subparsers)` function; handlers import heavy libraries only when they run,
so `unweather --help` stays fast. What joins two areas is wired here, above both: `run --ray`
(the pipeline of `unweather.stream`, scaled out by `unweather.cluster`) and `eval` (an engine scored
with training's metrics, `unweather.eval_cli`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from unweather import __version__
from unweather.errors import UnweatherError
from unweather.redact import RedactingFilter, redact

# The modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "unweather.stream.cli",
    "unweather.models.cli",
    "unweather.engine.cli",
    "unweather.training.cli",
    "unweather.eval_cli",
    "unweather.training.train_cli",
    "unweather.bench.cli",
    "unweather.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="unweather",
        description="Remove rain, snow and haze from camera streams and videos in real time.",
    )
    parser.add_argument("--version", action="version", version=f"unweather {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _wire_ray(subparsers.choices["run"])
    return parser


def _wire_ray(run: argparse.ArgumentParser) -> None:
    """Give `run` the Ray options and a handler that runs on this machine, or on Ray with `--ray`."""
    from unweather.cluster.cli import add_ray_arguments, handle_run

    add_ray_arguments(run)
    run.set_defaults(func=handle_run)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (it may be redirected meanwhile)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(verbose: bool, quiet: bool = False) -> tuple[list[logging.Handler], int, bool]:
    """Send the package's log records to stderr, redacted (`quiet`: warnings and errors only).

    Returns:
        The logger's previous handlers, level and propagation, to restore.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("unweather")
    previous = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _configure_logging(args.verbose, getattr(args, "quiet", False) is True)
    try:
        return _run(parser, args)
    finally:
        # Callers that run main() in-process (tests, notebooks) get their logging back.
        logger = logging.getLogger("unweather")
        logger.handlers[:] = previous[0]
        logger.setLevel(previous[1])
        logger.propagate = previous[2]


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UnweatherError as exc:
        print(f"unweather: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unweather: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback by default
        if args.debug:
            raise
        print(f"unweather: error: {type(exc).__name__}: {redact(str(exc))} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
