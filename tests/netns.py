"""Hosts made of network namespaces: a bridge in this namespace (the "switch", and the address
MariaDB, Redis and nginx are reached at) and one namespace per host, each on its own veth.

Only addresses in 10.213.N.0/24 are used, N chosen free on this machine, and only on the bridge
and veths made here; everything made is removed by close(), also after a failure half-way."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field
from typing import Self

PREFIX = "10.213"


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def _free_subnet() -> int:
    """N such that no address of this machine is in 10.213.N.0/24 and no link is named for it."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    for n in range(1, 255):
        if f"{PREFIX}.{n}." not in used and f"chb{n}:" not in links:
            return n
    raise RuntimeError(f"no free {PREFIX}.N.0/24 subnet")


@dataclass
class Host:
    netns: str
    address: str
    veth: str  # its end in our namespace: down means its cable is cut

    def cut(self) -> None:
        ip("link", "set", self.veth, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.veth, "up")


@dataclass
class Network:
    subnet: int = field(default_factory=_free_subnet)
    hosts: list[Host] = field(default_factory=list)
    bridge_made: bool = False

    @property
    def bridge(self) -> str:
        return f"chb{self.subnet}"

    @property
    def gateway(self) -> str:
        """This namespace's address on the bridge."""
        return f"{PREFIX}.{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_network(f"{PREFIX}.{self.subnet}.0/24"))

    def __enter__(self) -> Self:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self.bridge_made = True
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_host(self) -> Host:
        index = len(self.hosts) + 1
        host = Host(
            f"chat{self.subnet}h{index}", f"{PREFIX}.{self.subnet}.{index + 1}", f"chv{self.subnet}h{index}"
        )
        inside = f"{host.veth}i"
        self.hosts.append(host)  # from here on close() removes it, whatever fails next
        subprocess.run(["ip", "netns", "add", host.netns], check=True, capture_output=True)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.netns)
        ip("link", "set", host.veth, "master", self.bridge)
        ip("link", "set", host.veth, "up")
        ip("addr", "add", f"{host.address}/24", "dev", inside, netns=host.netns)
        ip("link", "set", inside, "up", netns=host.netns)
        ip("link", "set", "lo", "up", netns=host.netns)
        return host

    def close(self) -> None:
        """Remove every namespace (its veth pair goes with it) and the bridge; keep going on errors."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
        self.hosts.clear()
        if self.bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self.bridge_made = False
