"""Pod networking for the end-to-end harness: one network namespace per pod on a shared bridge.

Each pod gets its own namespace, a veth into the bridge and an address; `/etc/netns/<ns>/hosts`
(which `ip netns exec` bind-mounts over /etc/hosts) carries the pod's own name and the
headless-service DNS names of every pod, as cluster DNS would answer them. Everything made here is
recorded and removed by `cleanup`, also after a failure.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
FAIL_FAST_RESOLVER = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


@dataclass
class PodNetwork:
    netns: str
    veth: str
    ip: str
    hostnames: list[str] = field(default_factory=list)


# Pod subnets are /24s taken from here; each bridge takes one no interface on this host already uses.
POD_SUBNETS = ipaddress.ip_network("10.213.0.0/16")


def subnets_in_use() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], check=True, capture_output=True, timeout=30).stdout
    return [
        ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in json.loads(out)
        for a in link.get("addr_info", [])
    ]


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 no other interface holds: a second suite on this host (or one killed before its cleanup
    ran, leaving its bridge behind) must not share a route with ours, or pods cannot reach the host."""
    used = subnets_in_use()
    for candidate in POD_SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError(f"no free /24 left in {POD_SUBNETS} for the pod bridge")


class Bridge:
    def __init__(self) -> None:
        self.suffix = secrets.token_hex(2)
        self.name = f"tpsbr{self.suffix}"
        self.network = free_subnet()
        self._hosts = iter(self.network.hosts())
        self.gateway = str(next(self._hosts))
        self.pods: dict[str, PodNetwork] = {}
        self._added = 0  # names are never reused: a stopping pod may still hold its namespace
        run("ip", "link", "add", self.name, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.name)
        run("ip", "link", "set", self.name, "up")

    def add_pod(self, pod_key: str, hostnames: list[str]) -> PodNetwork:
        self._added += 1
        index = self._added
        netns = f"tps{self.suffix}p{index}"
        veth = f"vt{self.suffix}p{index}"
        ip = str(next(self._hosts))
        network = PodNetwork(netns, veth, ip, hostnames)
        self.pods[pod_key] = network
        run("ip", "netns", "add", netns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run("ip", "link", "set", veth, "master", self.name, "up")
        run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ip}/{self.network.prefixlen}", "dev", "eth0")
        run("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
        run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", self.gateway)
        self.write_hosts_files()
        return network

    def remove_pod(self, pod_key: str) -> None:
        network = self.pods.pop(pod_key, None)
        if network is None:
            return
        subprocess.run(["ip", "netns", "del", network.netns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", network.veth], capture_output=True, timeout=30)
        shutil.rmtree(NETNS_ETC / network.netns, ignore_errors=True)
        self.write_hosts_files()

    def write_hosts_files(self) -> None:
        """Every pod resolves every pod (headless services publish not-ready addresses too)."""
        lines = ["127.0.0.1 localhost"] + [f"{p.ip} {' '.join(p.hostnames)}" for p in self.pods.values()]
        content = "\n".join(lines) + "\n"
        for network in self.pods.values():
            path = NETNS_ETC / network.netns / "hosts"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Rewrite in place: running pods see /etc/hosts through a bind mount of this very inode.
            with open(path, "w") as handle:
                handle.write(content)
            # A name not in the hosts file fails at once, as cluster DNS answers NXDOMAIN: the host's
            # own resolver is unreachable from a pod's namespace, and c10d's reverse look-ups of
            # peer addresses would each wait out its timeouts (seconds per group formation).
            (path.parent / "resolv.conf").write_text(FAIL_FAST_RESOLVER)

    def cleanup(self) -> None:
        for key in list(self.pods):
            self.remove_pod(key)
        subprocess.run(["ip", "link", "del", self.name], capture_output=True, timeout=30)
