"""Command line: `python -m chat_server <command>`. Each command registers itself here."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from . import migrate_legacy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat_server", description="chat_server commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate_legacy.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # MariaDB reports notes such as "table already exists" on IF NOT EXISTS as warnings.
    warnings.filterwarnings("ignore", category=Warning, module="aiomysql")
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
