"""``python -m service`` / ``deeplab-serve``: every setting as a flag, defaulting to the environment.

Flags are generated from ``Settings`` (``max_batch_size`` -> ``--max-batch-size``) so the CLI and
the ``DEEPLAB_*`` variables can never disagree; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing

from model.version import package_version
from service.settings import Settings, choices_of, default_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplab-serve", description="DeepLabV3+ segmentation service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    for name, field in Settings.model_fields.items():
        repeated = typing.get_origin(field.annotation) is list  # --model A --model B
        switch = {"nargs": "?", "const": "true"} if field.annotation is bool else {}  # --flag = --flag true
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            action="append" if repeated else "store",
            choices=choices_of(name),
            help=f"{field.description}; default: {default_text(name)} (env DEEPLAB_{name.upper()})",
            **switch,
        )
    return parser


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        return Settings(**given)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    # grpc's C core would print its own plain-text lines (e.g. a port clash) beside the JSON log;
    # the server reports those failures itself. GRPC_VERBOSITY=ERROR (or DEBUG) brings them back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from service.server import (
        serve,  # after parsing: --help and --version skip the web stack
    )

    try:
        serve(settings)
    except SystemExit as exc:  # "deeplab-serve: cannot start: ...": as JSON too when logs are
        if not isinstance(exc.code, str) or settings.log_format != "json":
            raise
        logging.getLogger("service").error(exc.code)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
