"""`python -m tpserve --model PATH [flags]` (also the `tpserve` console script)."""

from __future__ import annotations

import sys

from .entrypoints.cli import server_args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["download"]:  # the init container of a hub model's pods
        from .entrypoints.download import main as download

        sys.exit(download(argv[1:]))
    args = server_args(argv)  # exits 2 with one clear line on bad flags, before any process starts
    from .entrypoints.node_server import serve

    sys.exit(serve(args))


if __name__ == "__main__":
    main()
