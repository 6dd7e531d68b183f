"""`anonymizer run`'s default engine: the Prefect flow, with Prefect's temporary API server started first.

Without a Prefect server (no PREFECT_API_URL), Prefect starts a temporary one when the flow first reaches its
API. Its launcher lives in Prefect's server package, so the driver first imports the whole server (seconds of
CPU) and only then does the server's own process begin its imports and its database (seconds more), while
the flow waits. Here the same server (Prefect's API app, in ephemeral mode, on 127.0.0.1) is launched before
this process imports anything heavy, so its start overlaps the driver's imports and Ray's. Where Prefect's
settings name a server (an environment variable, a profile, a .env file), that server is used and the
launched one is stopped unused. It stops when this process exits. Only the standard library is imported here.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing

# Prefect's own temporary server, as its launcher (SubprocessASGIServer) runs it: the API app in ephemeral
# mode (the services a temporary server runs), no UI.
SERVER = ("import sys, uvicorn; from prefect.server.api.server import create_app; "
          "uvicorn.run(create_app(ephemeral=True, final=True), host='127.0.0.1', port=int(sys.argv[1]), "
          "log_level='error', lifespan='on')")
PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind


class TemporaryServer:
    """Prefect's API server in a child process on a free loopback port, stopped with this process."""

    def __init__(self) -> None:
        self._spawn()
        # At exit, after Prefect's own exit handlers (registered later, run first) have sent its last logs
        # and events: stopped before them, they retry the API for a minute.
        atexit.register(self.stop)

    def _spawn(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0"}
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port)], env=env,
                                        stdin=subprocess.DEVNULL)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> None:
        """Until the API answers its health check; a port taken meanwhile is retried on another."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status == PORT_IN_USE:
                self._spawn()
                continue
            if status is not None:
                raise RuntimeError(f"Prefect's temporary server exited with status {status} before answering")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout:.0f} s "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(**kwargs) -> dict:
    """The flow (flows.anonymize_dataset), against the configured Prefect server or a temporary one."""
    server = None if os.environ.get("PREFECT_API_URL") else TemporaryServer()
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from anonymizer import logs
    from flows.anonymize_dataset import run_from_cli

    settings = get_current_settings()
    if server is not None and (settings.api.url or not settings.server.ephemeral.enabled):
        server.stop()  # a configured server, or temporary servers turned off: Prefect's own behaviour
        server = None
    if server is None:
        return run_from_cli(**kwargs)
    logs.event("prefect_temporary_server", url=server.api_url)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        return run_from_cli(**kwargs, api=lambda: server.wait(settings.server.ephemeral.startup_timeout_seconds))
