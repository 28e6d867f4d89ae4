"""Fast checks of a Ray cluster address, before anything slow touches it.

``ray.init(address=...)`` and ``ray start --address=...`` retry for ~20 s when
nothing answers or the token is wrong, and a port that accepts TCP but is not
Ray makes Ray's GCS client wait ~40 s. So we check in three steps:

1. TCP connect (milliseconds): is anything listening?
2. HTTP/2 preface (milliseconds): is it a gRPC server (Ray's GCS is one)?
3. One GCS call in a child process (about 1 s, mostly ``import ray``): does it
   accept our token, and which nodes does it have? A child process keeps Ray's
   C++ token cache and its log lines out of the caller.

``python -m cluster.probe HOST:PORT`` runs step 3 and prints its JSON.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from .auth import merged_env
from .errors import ClusterError

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


class GcsAuthError(ClusterError):
    """The cluster rejected this client's token (or the missing token)."""


@dataclass
class NodeInfo:
    """One Ray node as the GCS reports it."""

    node_id: str
    ip: str
    alive: bool
    is_head: bool
    cpus: float = 0.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)


def parse_address(address: str, flag: str = "--address") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ``ray://`` and missing ports are errors naming ``flag``."""
    a = address.strip()
    if "://" in a:
        raise ClusterError(
            f"{flag} {address!r}: give the head's GCS address as HOST:PORT (e.g. 10.0.0.5:6379), not a URL"
        )
    host, sep, port = a.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"{flag} {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379) or 'auto'")
    return host, int(port)


def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def speaks_grpc(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if host:port answers an HTTP/2 client preface with a SETTINGS frame (gRPC servers do)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
            return head[3] == 0x04  # frame type SETTINGS
    except OSError:
        return False


def query_nodes(address: str, env_changes: dict[str, str | None] | None = None, timeout: float = 45.0) -> list[NodeInfo]:
    """Ask the GCS at ``address`` for its nodes, from a child process with ``env_changes`` applied.

    Raises :class:`GcsAuthError` when the token is refused, :class:`ClusterError`
    for anything else (message without the flag name; callers add context).
    """
    cmd = [sys.executable, "-c", _CHILD, address]
    try:
        out = subprocess.run(
            cmd, env=merged_env(env_changes or {}), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"the Ray GCS at {address} did not answer within {timeout:.0f} s") from None
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"could not query the Ray GCS at {address}: {tail}")
    reply = json.loads(lines[-1])
    if not reply["ok"]:
        if reply["kind"] == "auth":
            raise GcsAuthError(reply["message"])
        raise ClusterError(reply["message"])
    return [NodeInfo(**n) for n in reply["nodes"]]


# Runs in the child process: only the standard library and Ray, so it works
# whether or not this package is importable there.
_CHILD = r"""
import json, sys
address = sys.argv[1]
try:
    from ray._raylet import GcsClient
    infos = GcsClient(address=address).get_all_node_info(timeout=10)
except Exception as e:
    text = f"{type(e).__name__}: {e}"
    kind = "auth" if ("AuthenticationError" in text or "InvalidAuthToken" in text) else "error"
    print(json.dumps({"ok": False, "kind": kind, "message": text.splitlines()[0][:300]}))
    sys.exit(0)
nodes = []
for info in infos.values():
    res = {k: float(v) for k, v in dict(info.resources_total).items()}
    nodes.append(dict(
        node_id=info.node_id.hex(),
        ip=info.node_manager_address,
        alive=info.state == 0,  # GcsNodeInfo.ALIVE
        is_head=bool(getattr(info, "is_head_node", False)) or "node:__internal_head__" in res,
        cpus=res.get("CPU", 0.0),
        gpus=res.get("GPU", 0.0),
        resources=res,
    ))
print(json.dumps({"ok": True, "nodes": nodes}))
"""


if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-c", _CHILD, *sys.argv[1:]]))
