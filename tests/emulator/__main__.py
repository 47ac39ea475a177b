"""Starts moto's server with guardlake's extension: `python -m emulator --port 4599`.

Binds 127.0.0.1 only. Writes nothing but its log; the Makefile keeps the pid file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("EMULATOR_PORT", "4599")))
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    from . import cloudtrail_ext, events_ext, guardduty_ext
    from .control import ControlMiddleware

    _cache_module_list()
    guardduty_ext.install()
    cloudtrail_ext.install()
    events_ext.install()
    app = ControlMiddleware(DomainDispatcherApplication(create_backend_app))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    run_simple("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)


def _cache_module_list() -> None:
    """moto's dispatcher lists its package directory (a listdir and ~175 stats) on every
    request to ask whether the Host header names a service module; the list never changes
    while the server runs, so it is read once."""
    from moto import backends

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


if __name__ == "__main__":
    main()
