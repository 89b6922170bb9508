"""A real redis-server on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process with persistence off; can be killed and started again."""

    def __init__(self, *extra: str) -> None:
        self.extra = list(extra)  # more redis-server options (--replicaof, --cluster-enabled)
        binary = shutil.which("redis-server")
        if binary is None:
            reason = "redis-server is not installed: the Redis store tests cannot run (.ci/run installs it)"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="redis-test-")
        # kept across stop() / start() (a restart), removed with the server object or at exit
        weakref.finalize(self, shutil.rmtree, self.workdir, True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self, **kwargs: object) -> redis.Redis:
        """A client as the README recommends: short timeouts, no client-side retries."""
        return redis.Redis(
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )  # type: ignore[arg-type]
