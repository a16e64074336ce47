"""The `byol-search` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Learn an image encoder from your own photo folder with BYOL, index the folder with FAISS,
and search and label it in the browser.

Pipeline: pretrain -> export -> index -> serve (or `run` to do all four, `demo` to try it).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byol-search", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # subcommands register below, one function each
    # <<pretrain>>
    # <<evaluate>>
    # <<export>>
    # <<index>>
    # <<search>>
    # <<duplicates>>
    # <<serve>>
    # <<run>>
    # <<demo>>
    del sub
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
