"""The shipped deployment (deploy/), run by tests as a person would run it: nginx with the site
rendered by deploy/render-nginx-site, a self-signed certificate, and the chat server started by the
command of deploy/systemd/chat.service with the settings of deploy/chat.env.example."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from .services import ChatServer, free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "chat.service"
ENV_EXAMPLE = DEPLOY / "chat.env.example"
# Where the unit expects the code; tests run it from this checkout.
INSTALL_DIR = "/opt/chat"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test)", pytrace=False)
    pytest.skip(reason)


def require_nginx() -> str:
    """Debian's nginx, installed when missing and we are root (in CI as well as here)."""
    if shutil.which("nginx") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
            capture_output=True,
        )
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if path is None:
        _unavailable("nginx is not installed and cannot be installed without root (apt-get install nginx)")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        _unavailable(f"{what} needs root")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost, 127.0.0.1 and ::1, and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def unit_settings() -> dict[str, str]:
    """[Service] Key=value lines of the shipped unit."""
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def example_environment(**overrides: str) -> dict[str, str]:
    """The shipped environment file, with the values only this machine knows replaced."""
    env: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return {**env, **overrides}


class UnitServer(ChatServer):
    """The chat server as the unit starts it: its ExecStart in its WorkingDirectory, its
    EnvironmentFile's settings; reloaded with its ExecReload."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        super().__init__(folder, env)
        self.port = int(env["CHAT_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.unit = unit_settings()

    def command(self) -> list[str]:
        exec_start = self.unit["ExecStart"].replace(f"{INSTALL_DIR}/.venv/bin/python", sys.executable)
        return exec_start.replace(INSTALL_DIR, str(ROOT)).split()

    def reload(self) -> None:
        """`systemctl reload`: the unit's ExecReload with $MAINPID."""
        assert self.process is not None
        command = self.unit["ExecReload"].replace("$MAINPID", str(self.process.pid))
        subprocess.run(command.split(), check=True)


class Nginx:
    """A private nginx master serving the shipped site, with its own pid, logs and temp files."""

    def __init__(self, folder: Path, upstreams: list[str], *, fail_timeout: str = "10s") -> None:
        self.binary = require_nginx()
        self.folder = folder
        self.https_port = free_port()
        self.http_port = free_port()
        self.cert, self.key = self_signed_certificate(folder)
        self.upstreams = folder / "chat-upstreams.conf"
        lines = (f"server {u} max_fails=1 fail_timeout={fail_timeout};\n" for u in upstreams)
        self.upstreams.write_text("".join(lines))
        self.site = folder / "chat-site.conf"
        self.access_log = folder / "nginx-access.log"
        self.process: subprocess.Popen[bytes] | None = None

    def render_site(self) -> None:
        """As the README says: deploy/render-nginx-site, with this machine's paths and ports."""
        env = {
            **os.environ,
            "CHAT_DOMAIN": "localhost",
            "CHAT_TLS_CERT": str(self.cert),
            "CHAT_TLS_KEY": str(self.key),
            "CHAT_UPSTREAMS": str(self.upstreams),
            "CHAT_HTTPS_PORT": str(self.https_port),
            "CHAT_HTTP_PORT": str(self.http_port),
        }
        rendered = subprocess.run(
            [str(DEPLOY / "render-nginx-site")], env=env, check=True, capture_output=True
        ).stdout
        self.site.write_bytes(rendered)

    def main_config(self) -> Path:
        """What Debian's /etc/nginx/nginx.conf is to the site, with paths of our own."""
        temp = self.folder / "nginx-temp"
        temp.mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read our private folder
        config = self.folder / "nginx.conf"
        config.write_text(
            f"""{user}daemon off;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/nginx-error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.site};
}}
"""
        )
        return config

    def start(self) -> None:
        self.render_site()
        config = self.main_config()
        command = [self.binary, "-e", str(self.folder / "nginx-error.log"), "-c", str(config)]
        test = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr
        with (self.folder / "nginx-out.log").open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.https_port, self.process, "nginx", "::1")

    def stop(self) -> None:
        stop_process(self.process)  # nginx's fast shutdown: a graceful one waits for every stream
        self.process = None
