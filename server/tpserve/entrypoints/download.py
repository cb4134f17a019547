"""`python -m tpserve download --model org/name [--revision R]`: fetch a hub model into the cache.

The operator runs it as an init container, so a pod's server starts with its files in place. The
server itself would download them too; doing it first keeps the download out of the startup probe's
clock and lets several pods that share one cache (a ReadWriteMany volume, a hostPath per node) fetch
it once: `models.hub.download` holds a file lock in the cache while it downloads.
"""

from __future__ import annotations

import argparse
import sys

from ..core.errors import ConfigError
from ..core.logs import LOG_FORMATS, configure_logging
from ..models import hub


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tpserve download", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id org/name")
    parser.add_argument("--revision", help="a branch, tag or commit (default: main)")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    args = parser.parse_args(argv)
    configure_logging("info", args.log_format)
    if not hub.HUB_ID.match(args.model):
        print(f"tpserve download: error: --model {args.model!r} is not a hub id org/name", file=sys.stderr)
        return 2
    try:
        snapshot = hub.download(args.model, args.revision, node=None)
    except ConfigError as exc:
        print(f"tpserve download: error: {exc}", file=sys.stderr)
        return 2
    print(snapshot.path)
    return 0
