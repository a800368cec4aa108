"""CLI: `ascend-llm-gateway` / `python -m app`. Flags mirror GATEWAY_* variables.

The exit code is the supervisor's: 0 after a drain, non-zero when the engine
failed to start or died, so an orchestrator restarts the pod.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
from typing import NoReturn

import uvicorn
from fastapi import FastAPI

from app.api.header_limits import HeaderLimits, protocol_class
from app.config import Settings
from app.lifecycle.server import GatewayServer
from app.lifecycle.startup_checks import ConfigError, check_stale_engines, startup_settings
from app.main import create_app
from app.observability.logs import configure
from app.tenancy.tenants import TenantsFileError


def uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """How uvicorn serves `app`: our header limits on its parser, and idle
    keep-alive connections kept longer than clients keep them pooled."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # ours, from app.observability.logs
        http=protocol_class(
            HeaderLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout),
            on_reject=app.state.refused_early,
        ),
        timeout_keep_alive=settings.keepalive_timeout,
        timeout_graceful_shutdown=5,
    )


def _refuse(exc: ConfigError) -> NoReturn:
    for line in exc.lines:
        print(f"ascend-llm-gateway: {line}", file=sys.stderr)
    sys.exit(exc.code)


def main(argv: list[str] | None = None) -> None:
    # SIGHUP's default action ends the process; until the app's own handler
    # is installed (app.main: reload), it is only noted.
    signal.signal(signal.SIGHUP, lambda sig, frame: None)
    try:
        settings = startup_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        _refuse(exc)
    configure(settings.log_level, settings.log_format)
    try:
        check_stale_engines(settings)
    except ConfigError as exc:
        _refuse(exc)
    server: GatewayServer | None = None

    def on_exit() -> None:
        if server is not None:
            server.stop()

    try:
        app = create_app(settings, on_exit=on_exit)
    except (TenantsFileError, OSError) as exc:  # the tenants or key file
        _refuse(ConfigError([str(exc)]))
    server = GatewayServer(uvicorn_config(settings, app), app.state.supervisor)
    server.run()
    # The engine and its processes are down. Run the exit handlers, then skip
    # the interpreter's module teardown: all it would add is ~30 lines of
    # nanobind "leaked type" reports from triton (which vLLM imports) at the
    # end of every pod's log.
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(app.state.supervisor.exit_code)


if __name__ == "__main__":
    main()
