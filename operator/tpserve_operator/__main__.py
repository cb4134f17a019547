"""`python -m tpserve_operator`: run the operator.

Environment: TPSERVE_LOG_LEVEL (debug|info|warning|error), WATCH_NAMESPACES (comma-separated; empty = all namespaces), LIVENESS_PORT (8080),
TPSERVE_RECONCILE_INTERVAL_S, TPSERVE_RESTART_BACKOFF_BASE_S.
"""

from __future__ import annotations

import os

import kopf

from . import handlers  # importing registers the handlers


def main() -> None:
    level = os.environ.get("TPSERVE_LOG_LEVEL", "info").lower()
    kopf.configure(debug=level == "debug", verbose=level == "debug", quiet=level in ("warning", "error"))
    namespaces = handlers.watch_namespaces()
    port = int(os.environ.get("LIVENESS_PORT", "8080"))
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{port}/healthz",
    )


if __name__ == "__main__":
    main()
