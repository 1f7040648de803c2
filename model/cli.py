"""What every command line of the project shares: help that shows defaults, and `--version`.

One parser factory, so `--help` and `--version` read the same in `python -m model`, the predict,
train and evaluate CLIs and the export tools.
"""

from __future__ import annotations

import argparse

from .configs import parse_test_scale
from .version import DISTRIBUTION, package_version


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to each option's help, except where X is None or False: those mean
    "not given" and the help text itself says what happens then."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def argument_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An `ArgumentParser` with `HelpFormatter` and a `--version` flag."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {package_version()}")
    return parser


def test_scale_arg(size: str) -> str:
    """``--test-scale WxH`` of the CLIs, refused at parse time with the form it needs."""
    try:
        parse_test_scale(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size
