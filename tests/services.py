"""Private MariaDB and Redis servers for fault tests: spare ports and data folders, started and
stopped by the tests, so the machine's shared servers are never touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

import pytest

MARIADBD = "/usr/sbin/mariadbd"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require(binary: str) -> str:
    path = shutil.which(binary) or (binary if os.path.exists(binary) else None)
    if path is None:
        reason = f"{binary} is not installed"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # a server process has no event to wait on: poll its port
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {START_TIMEOUT}s")


def stop_process(process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM) -> None:
    """Ask a process to stop (SIGTERM unless told), and kill it if it has not within 30 s."""
    if process is not None and process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PrivateServer:
    """A server process that can be stopped and started again on the same port and data."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    name = "server"

    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.host = host  # the address it binds and is reached at
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with (self.folder / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, self.name, self.host)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class PrivateRedis(PrivateServer):
    name = "redis"

    def command(self) -> list[str]:
        binary = _require("redis-server")
        return [binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


class PrivateMariaDB(PrivateServer):
    name = "mariadb"

    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        super().__init__(folder, host)
        self.datadir = folder / "mariadb-data"
        install = _require("mariadb-install-db")
        _require(MARIADBD)
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )

    def command(self) -> list[str]:
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.folder / 'mariadb.sock'}",
            "--user=root",
            "--innodb-buffer-pool-size=64M",
            "--skip-log-bin",
        ]

    def url(self, database: str) -> str:
        return f"mysql://root@{self.host}:{self.port}/{database}"


class ChatServer:
    """`python run.py` as its own process, on a port of its own that survives restarts."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str) -> None:
        self.folder = folder
        self.env = {**os.environ, **env}
        self.args = args
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Everything the server printed: its log lines and access log."""
        return self.folder / f"server-{self.port}.log"

    def command(self) -> list[str]:
        return [sys.executable, "run.py", "--port", str(self.port), *self.args]

    def start(self, *, wait: bool = True) -> None:
        root = Path(__file__).resolve().parent.parent
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_for_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first `count` matches of `pattern` in the log, once they are there."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.log_path.read_text(errors="replace")))
            if len(matches) >= count:
                return matches[:count]
            time.sleep(0.05)  # another process's log file: nothing to wait on but its content
        raise RuntimeError(f"{pattern!r} did not appear {count} times in {self.log_path}")

    def wait_ready(self) -> int:
        """The pid that answered /healthz once the server answers (on a fresh connection)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the chat server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as resp:
                    return int(json.loads(resp.read())["pid"])
            except OSError:
                time.sleep(0.05)  # still starting: nothing to wait on but the port
        raise RuntimeError(f"the chat server did not answer within {START_TIMEOUT}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to anyone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> int | None:
        """SIGTERM and wait: the exit code."""
        if self.process is None:
            return None
        self.process.terminate()
        code = self.process.wait(timeout=60)
        self.process = None
        return code
