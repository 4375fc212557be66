"""Start the serving app under uvicorn with settings that are right for serving by default."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from ml_platform.layout import StateLayout
from ml_platform.settings import PROMETHEUS_MULTIPROC_ENV, SERVE_RELOAD_SECONDS_ENV

KEEP_ALIVE_SECONDS = 5
HEADER_TIMEOUT_SECONDS = 10.0
WORKER_HEALTHCHECK_SECONDS = 60


def default_workers() -> int:
    """One worker per core: each is single-threaded (native pools are limited to 1 thread)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    reload_seconds: float = 5.0,
    access_log: bool = False,
) -> None:
    """Run until interrupted. Workers read their settings from the environment set here."""
    import uvicorn

    from ml_platform.instance import secure_state

    secure_state(root)  # prediction logs and metrics files: 0600 in 0700 folders
    workers = workers or default_workers()
    metrics_dir = StateLayout(root).prometheus(port)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero with each server
    metrics_dir.mkdir(parents=True)
    os.environ.update(
        {
            "ML_PLATFORM_ROOT": str(Path(root).resolve()),
            PROMETHEUS_MULTIPROC_ENV: str(metrics_dir),
            SERVE_RELOAD_SECONDS_ENV: str(reload_seconds),
            # Set before the workers start so OpenMP/BLAS never size their pools to all cores.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    print(f"serving on http://{host}:{port} with {workers} worker(s)", flush=True)
    uvicorn.run(
        "ml_platform.serving.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        backlog=2048,
        # An idle keep-alive connection is closed after this; a /predict body that trickles in
        # is cut by the app (ML_PLATFORM_SERVE_BODY_TIMEOUT_SECONDS, 408); request line and
        # headers must arrive within HEADER_TIMEOUT_SECONDS (HeaderTimeoutProtocol).
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        http="ml_platform.serving.server:HeaderTimeoutProtocol",
        # uvicorn kills a worker that misses its supervisor's ping for this long (default 5 s):
        # on a busy machine a worker still importing and loading models was killed and
        # restarted over and over, and the server never became ready.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )


@functools.cache
def _header_timeout_protocol() -> type:
    """Built on first use: uvicorn and httptools are imported only by the serving processes."""
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for the request line and headers.

        uvicorn times out idle keep-alive connections but never one whose headers trickle in
        (a slowloris client holds a connection, and its buffer, for as long as it likes). The
        deadline runs from the connection's start, and from the end of each response for the
        next request; the complete headers stop it. Bodies have their own timeout in the app.
        """

        header_timeout: float = HEADER_TIMEOUT_SECONDS
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_late(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.logger.info(
                    "closed a connection whose headers took over %.0f s", self.header_timeout
                )
                self.transport.close()

    return HeaderTimeoutProtocol


def __getattr__(name: str) -> type:  # `http="…server:HeaderTimeoutProtocol"` for uvicorn
    if name == "HeaderTimeoutProtocol":
        return _header_timeout_protocol()
    raise AttributeError(name)
