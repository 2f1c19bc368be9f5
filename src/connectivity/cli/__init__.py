"""The ``connectivity`` command.

Each subcommand is a module of this package that satisfies :class:`Command`: a one-line ``HELP``, a ``configure``
function that adds its options to an argparse parser, and a ``run`` function that does the work and returns the
exit status. Registering one is a line in :data:`COMMANDS`. Subcommand modules import only the core dependencies at
module level; anything from an extra (rich, uvicorn) is imported when the subcommand runs, so ``connectivity
--version`` and ``--help`` work with the bare package.

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Protocol

from connectivity._version import __version__
from connectivity.cli import certs, compare, demo

__all__ = ["COMMANDS", "Command", "main"]


class Command(Protocol):
    """What a subcommand module provides."""

    HELP: str
    """One line for ``connectivity --help``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's options to ``parser``."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; returns the process exit status."""
        ...


COMMANDS: Mapping[str, Command] = {"demo": demo, "certs": certs, "compare": compare}
"""Subcommands by name, in ``--help`` order."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connectivity",
        description="connectivity: what a service mesh sidecar and an API gateway do, inside the process.",
    )
    parser.add_argument("--version", action="version", version=f"connectivity {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subcommands.add_parser(name, help=command.HELP, description=command.HELP)
        command.configure(sub)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``connectivity`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: the subcommand's, or 2 when no subcommand was given.

    Raises:
        SystemExit: From argparse, for ``--help``, ``--version`` and usage errors.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    status: int = args.handler(args)
    return status
