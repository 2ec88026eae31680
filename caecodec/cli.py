"""The `caecodec` command line. Each subcommand lives in its own module, imported only when it runs.

Exit codes: 0 success, 1 failure of the work itself, 2 bad usage or bad input (one clear line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand name -> module providing `add_arguments(parser)`, `run(args) -> int` and a docstring (its help);
# "module:name" names an object in the module with the same three (for modules holding related commands)
COMMANDS = {
    "bench": "caecodec.commands.bench",
    "demo": "caecodec.commands.demo",
    "train": "caecodec.commands.train",
    "compress": "caecodec.commands.files:Compress",
    "decompress": "caecodec.commands.files:Decompress",
    "info": "caecodec.commands.files:Info",
    "to-zarr": "caecodec.commands.zarrio:ToZarr",
    "from-zarr": "caecodec.commands.zarrio:FromZarr",
    "inspect": "caecodec.commands.inspect",
}


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="caecodec", description="Learned image compression for Zarr.")
    parser.add_argument("--version", action="version", version=f"caecodec {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module_name, _, attribute = module_name.partition(":")
        module = import_module(module_name)
        module = getattr(module, attribute) if attribute else module
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("caecodec: interrupted", file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError) as error:
        print(f"caecodec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m caecodec.cli` runs this file as __main__: use the package's module so that its UsageError
    # is the class the commands raise
    from caecodec.cli import main as package_main

    sys.exit(package_main())
