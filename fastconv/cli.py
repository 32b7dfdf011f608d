"""The `fastconv` command: `fastconv bench ...`, `fastconv explain ...` and
`fastconv tiles export ...`."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .bench import cli as bench_cli

    bench_cli.add_parser(sub)
    from . import tiles

    tiles.add_parser(sub)
    try:
        from .explain import cli as explain_cli
    except ImportError:
        explain_cli = None
    if explain_cli is not None:
        explain_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
