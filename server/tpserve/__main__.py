"""`python -m tpserve --model PATH [flags]` (also the `tpserve` console script)."""

from __future__ import annotations

import sys

from .entrypoints.cli import server_args


def main(argv: list[str] | None = None) -> None:
    args = server_args(argv)  # exits 2 with one clear line on bad flags, before any process starts
    from .entrypoints.node_server import serve

    sys.exit(serve(args))


if __name__ == "__main__":
    main()
