"""Running the server inside the current process (tests, benchmarks, notebooks): uvicorn in a background thread."""

from __future__ import annotations

import threading
import time

from qwen25vl.errors import Qwen25VLError


class BackgroundServer:
    """`with BackgroundServer(app) as srv: srv.url` serves `app` on 127.0.0.1 at a free port until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.host = host
        self.startup_timeout = startup_timeout
        self.thread = threading.Thread(target=self.server.run, name="qwen25vl-uvicorn", daemon=True)
        self.port = 0

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise Qwen25VLError(f"the server did not start within {self.startup_timeout}s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
