"""uvicorn, with SIGTERM meaning "drain" rather than "stop now".

uvicorn's own shutdown closes the listener first, so a Kubernetes probe or a
late request would see a refused connection instead of a 503, and streams get
only `timeout_graceful_shutdown`. Here the first SIGTERM/SIGINT starts the
supervisor's drain while the port stays open; when the drain is done the
supervisor asks uvicorn to exit. A second signal forces uvicorn's own exit.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from app.lifecycle.supervisor import Supervisor

# sse-starlette would end every stream on the first signal; drain does it.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, supervisor: Supervisor):
        super().__init__(config)
        self.supervisor = supervisor
        self._signalled = False

    def stop(self) -> None:
        """Called by the supervisor when the process should end."""
        AppStatus.should_exit = True
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self.should_exit:
            # A second signal: uvicorn's behaviour (stop now).
            self.force_exit = sig == signal.SIGINT or self.force_exit
            self.stop()
            return
        self._signalled = True
        # Not recorded in uvicorn's captured signals: it would re-raise
        # SIGTERM after shutdown and the exit code would no longer be ours.
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self.supervisor.begin_drain)
