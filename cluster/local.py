"""Start, join, inspect and stop Ray nodes on this machine (what ``stune cluster`` runs).

A thin wrapper over ``ray start``: it picks safe flags, checks ports, address and
token before Ray's slow retries, and records what it started so that
:func:`stop` ends exactly those processes (``ray stop`` would end every Ray
process on the machine, other people's included).

How a node is recorded: ``ray start`` runs in a new session (``setsid``); every
process it spawns (GCS, raylet, agents, and later the worker processes the
raylet forks) inherits that session id. The state file
``$STUNE_HOME/cluster/state.json`` (default ``~/.stune/cluster``) keeps, per node,
the session id and the start time, so a process belongs to a node when its
session id matches and it was created after the node started.

Network modes:

* single-node (default): node IP 127.0.0.1 plus ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``;
  every Ray port listens on loopback only (the one loopback-only mode Ray 2.60
  has; it also forbids other nodes).
* ``multi_node=True``: Ray's normal mode, listening on all interfaces, with token
  authentication required (``RAY_AUTH_MODE=token``; the token file is created
  if missing).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from .auth import AUTH_MODE_VAR, auth_disabled_explicitly, client_auth_env, ensure_token, merged_env, token_path
from .errors import ClusterError
from .probe import GcsAuthError, NodeInfo, parse_address, query_nodes, speaks_grpc, tcp_reachable

LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray renices its workers to 15, so trials get a small share of the CPU while anything at normal
# priority runs beside them (a second job, an editor, stune's own baseline scoring): on 2 busy
# cores a trial's actor did not start within 120 s. At 0 they run at the priority Ray was
# started with, so `nice stune sweep` still works. RAY_worker_niceness set by the user wins.
WORKER_NICENESS = {"RAY_worker_niceness": "0"}
DEFAULT_PORT = 6379
# Ray's default worker port range on a head is 10002-19999; nodes we add on the
# same machine take blocks above it.
_WORKER_BLOCK_START, _WORKER_BLOCK_END, _WORKER_BLOCK_SIZE = 20000, 30000, 100


# --------------------------------------------------------------------------- state


def stune_home() -> Path:
    """``$STUNE_HOME`` or ``~/.stune``."""
    return Path(os.environ.get("STUNE_HOME") or "~/.stune").expanduser()


def state_dir() -> Path:
    """Where ``stune cluster`` keeps its state file and ``ray start`` logs."""
    return stune_home() / "cluster"


@dataclass
class NodeRecord:
    """A Ray node started by :func:`start_head` or :func:`join` on this machine."""

    role: str  # "head" or "worker"
    sid: int  # session id shared by all processes of the node
    started_at: float  # time.time() just before `ray start` ran
    address: str  # GCS address of the cluster (HOST:PORT)
    node_ip: str
    multi_node: bool
    log: str  # output of `ray start`
    ports: dict[str, int] = field(default_factory=dict)
    num_cpus: int | None = None
    num_gpus: int | None = None


def _state_file() -> Path:
    return state_dir() / "state.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_nodes() -> list[NodeRecord]:
    """Nodes recorded in the state file (alive or not)."""
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return []
    return [NodeRecord(**n) for n in data.get("nodes", [])]


def _save_nodes(nodes: list[NodeRecord]) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=2))
    tmp.replace(_state_file())


def node_processes(rec: NodeRecord) -> list[psutil.Process]:
    """Live processes of a recorded node: same session id, created after it started."""
    found = []
    for p in psutil.process_iter(["create_time", "status"]):
        try:
            if os.getsid(p.pid) != rec.sid:
                continue
        except OSError:
            continue
        if p.info["create_time"] is None or p.info["create_time"] < rec.started_at - 1.0:
            continue
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        found.append(p)
    return found


def is_alive(rec: NodeRecord) -> bool:
    return bool(node_processes(rec))


def live_nodes() -> list[NodeRecord]:
    """Recorded nodes that still have processes."""
    return [n for n in load_nodes() if is_alive(n)]


# --------------------------------------------------------------------------- helpers


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """True if nothing listens on host:port (a bind with SO_REUSEADDR succeeds, no connect answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not tcp_reachable("127.0.0.1" if host == "0.0.0.0" else host, port, timeout=0.5)


def free_port(host: str = "0.0.0.0") -> int:
    """A port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _local_ips() -> set[str]:
    ips = {"127.0.0.1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET:
                ips.add(a.address)
    return ips


def is_local_host(host: str) -> bool:
    """True if ``host`` names this machine (loopback or one of its interface addresses)."""
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return False
    return ipaddress.ip_address(ip).is_loopback or ip in _local_ips()


def _ray_client_installed() -> bool:
    # Ray starts its client server (default port 10001) whenever grpc is importable.
    return importlib.util.find_spec("grpc") is not None


def _error_line(log_text: str) -> str:
    """The most telling line of a failed `ray start` output."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", ln)
        if m:
            return f"{m.group(1)}: {m.group(2)}"[:300]
    return (lines[-1] if lines else "no output")[:300]


def _kill_session(sid: int, started_at: float, grace: float = 5.0) -> int:
    rec = NodeRecord("?", sid, started_at, "", "", False, "")
    procs = node_processes(rec)
    return _terminate(procs, grace)


def _terminate(procs: list[psutil.Process], grace: float) -> int:
    """SIGTERM in Ray's own order (raylets, then the rest, GCS last), SIGKILL what outlives ``grace``.

    A raylet ends in ~2 s and takes its agents and workers with it; sent
    SIGTERM together with the GCS it waits for the GCS and takes ~12 s.
    """

    def name(p: psutil.Process) -> str:
        try:
            return p.name()
        except psutil.Error:
            return ""

    stages = [
        [p for p in procs if name(p) == "raylet"],
        [p for p in procs if name(p) not in ("raylet", "gcs_server")],
        [p for p in procs if name(p) == "gcs_server"],
    ]
    for stage in stages:
        for p in stage:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(stage, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=3)
    return len(procs)


def _ray_start(args: list[str], env: dict[str, str], log_name: str, timeout: float) -> tuple[int, float, Path]:
    """Run `ray start ARGS` in a new session; returns (session id, start time, log path)."""
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{log_name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started_at = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**WORKER_NICENESS, **env},
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid, started_at)
            proc.wait(timeout=10)
            raise ClusterError(f"`ray start` did not finish within {timeout:.0f} s (log: {log_path})") from None
    if rc != 0:
        _kill_session(proc.pid, started_at)
        raise ClusterError(f"`ray start` failed: {_error_line(log_path.read_text())} (log: {log_path})")
    return proc.pid, started_at, log_path


def _resource_args(num_cpus: int | None, num_gpus: int | None) -> list[str]:
    args = []
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    return args


def find_address(address: str | None = None, flag: str = "--address") -> str:
    """Turn ``None``/``"auto"``/``HOST:PORT`` into ``HOST:PORT`` of a cluster to talk to.

    ``None`` and ``"auto"`` look, in order, at ``RAY_ADDRESS``, the head started
    by ``stune cluster up`` on this machine, and the address the last
    ``ray start`` on this machine wrote (``/tmp/ray/ray_current_cluster``; how
    ``ray up``/KubeRay/SLURM nodes find their cluster). Unlike Ray's own
    ``"auto"`` it never guesses from the process list.
    """
    if address not in (None, "auto"):
        parse_address(address, flag)
        return address.strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        if "://" in env:
            raise ClusterError(f"RAY_ADDRESS={env!r} is a URL; stune needs the GCS address HOST:PORT")
        return env
    heads = [n for n in live_nodes() if n.role == "head"]
    if heads:
        return heads[0].address
    with contextlib.suppress(Exception):
        from ray._private.utils import read_ray_address

        found = read_ray_address()
        if found:
            return found
    raise ClusterError(
        f"no running Ray cluster found for {flag} {address or 'auto'}: start one with `stune cluster up` "
        f"or pass {flag} HOST:PORT"
    )


def check_cluster(
    address: str,
    flag: str = "--address",
    env_changes: dict[str, str | None] | None = None,
    hint: str = "start one with `stune cluster up` or fix HOST:PORT (without --address, stune runs Ray on this machine)",
) -> list[NodeInfo]:
    """Fail fast unless a Ray cluster that accepts our token answers at ``address``; return its nodes.

    ``flag`` names the option in messages; ``hint`` is what to do when nothing listens.
    Token settings come from ``env_changes`` (default :func:`cluster.auth.client_auth_env`).
    """
    host, port = parse_address(address, flag)
    if not tcp_reachable(host, port):
        raise ClusterError(f"nothing is listening at {address} ({flag}): {hint}")
    if not speaks_grpc(host, port):
        raise ClusterError(f"{address} ({flag}) answers but is not a Ray cluster (no Ray GCS there); check the port")
    changes = client_auth_env() if env_changes is None else env_changes
    try:
        return query_nodes(address, changes)
    except GcsAuthError:
        if AUTH_MODE_VAR in changes or os.environ.get(AUTH_MODE_VAR, "").lower() == "token":
            what = "refused this machine's token"
        else:
            what = "requires a token and this machine has none"
        extra = ", or pass --token-file" if flag == "ADDRESS" else ""
        raise ClusterError(
            f"the Ray cluster at {address} ({flag}) {what}: copy the head's token file "
            f"(~/.ray/auth_token on the head) to {token_path()} here, or set RAY_AUTH_TOKEN{extra}"
        ) from None
    except ClusterError as e:
        raise ClusterError(f"{flag} {address}: {e}") from None


# --------------------------------------------------------------------------- commands


@dataclass
class HeadInfo:
    """What :func:`start_head` started."""

    address: str  # HOST:PORT to give to `stune sweep --address` / `stune cluster join`
    multi_node: bool
    token_path: Path | None  # None when token auth is off (single-node with RAY_AUTH_MODE=disabled)
    token_created: bool
    record: NodeRecord


def start_head(
    *,
    multi_node: bool = False,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    port: int = DEFAULT_PORT,
    timeout: float = 180.0,
) -> HeadInfo:
    """Start a Ray head on this machine (``ray start --head``) and record it.

    Single-node listens on 127.0.0.1 only; multi-node listens on all interfaces
    and always uses token authentication. Token auth is also on for single-node
    (other local users could otherwise run code in it) unless the user set
    ``RAY_AUTH_MODE=disabled``.
    """
    with _locked():
        heads = [n for n in live_nodes() if n.role == "head"]
        if heads:
            raise ClusterError(
                f"Ray is already running here (head at {heads[0].address}, started by `stune cluster up`); "
                f"stop it first with `stune cluster down`"
            )
        if multi_node and auth_disabled_explicitly():
            raise ClusterError(
                f"--multi-node requires token authentication but {AUTH_MODE_VAR}="
                f"{os.environ[AUTH_MODE_VAR]} is set; unset it (a token is created for you)"
            )
        bind_host = "0.0.0.0" if multi_node else "127.0.0.1"
        if port == 0:
            port = free_port(bind_host)
        if not port_free(port, bind_host):
            raise ClusterError(
                f"port {port} is taken (another Ray cluster or service listens there); choose another with --port"
            )

        changes: dict[str, str | None] = {"RAY_ADDRESS": None}
        tok: Path | None = None
        created = False
        if not auth_disabled_explicitly():
            tok, created = ensure_token()
            changes[AUTH_MODE_VAR] = "token"
        args = ["--head", f"--port={port}", "--disable-usage-stats", "--include-dashboard=false"]
        ports: dict[str, int] = {"gcs": port}
        if multi_node:
            changes[LOOPBACK_VAR] = "1"  # Ray's default on Linux; needed on macOS
        else:
            changes[LOOPBACK_VAR] = "0"
            args.append("--node-ip-address=127.0.0.1")
        if _ray_client_installed():
            # Ray's client server would take port 10001 and collide with a second cluster.
            ports["ray_client"] = free_port(bind_host)
            args.append(f"--ray-client-server-port={ports['ray_client']}")
        args += _resource_args(num_cpus, num_gpus)

        sid, started_at, log = _ray_start(args, merged_env(changes), f"head-{port}", timeout)
        rec = NodeRecord(
            role="head",
            sid=sid,
            started_at=started_at,
            address=f"127.0.0.1:{port}",
            node_ip="127.0.0.1",
            multi_node=multi_node,
            log=str(log),
            ports=ports,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        _save_nodes([n for n in live_nodes()] + [rec])

    # Ask the GCS which IP the head registered with (multi-node: the machine's IP).
    try:
        nodes = check_cluster(f"127.0.0.1:{port}", "--port", {k: v for k, v in changes.items() if k == AUTH_MODE_VAR})
    except ClusterError:
        stop_nodes([rec])
        raise
    head_ip = next((n.ip for n in nodes if n.is_head and n.alive), "127.0.0.1")
    if multi_node:
        with _locked():
            recs = load_nodes()
            for r in recs:
                if r.sid == rec.sid and r.started_at == rec.started_at:
                    r.address, r.node_ip = f"{head_ip}:{port}", head_ip
            _save_nodes(recs)
        rec.address, rec.node_ip = f"{head_ip}:{port}", head_ip
    return HeadInfo(address=rec.address, multi_node=multi_node, token_path=tok, token_created=created, record=rec)


def join(
    address: str,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    token: str | None = None,
    token_file: str | os.PathLike | None = None,
    timeout: float = 180.0,
) -> NodeRecord:
    """Start a worker node on this machine that joins the cluster at ``address`` and record it.

    The token comes from ``token``, ``token_file``, ``RAY_AUTH_TOKEN`` or the
    default token file, in that order. On the head's own machine the node gets
    its own IP (127.0.0.2, 127.0.0.3, ...) and free ports, so two nodes can be
    tried on one laptop.
    """
    flag = "ADDRESS"
    if token_file is not None and not Path(token_file).expanduser().is_file():
        raise ClusterError(f"--token-file {token_file}: no such file")
    changes = client_auth_env(token=token, token_file=token_file)
    nodes = check_cluster(
        address, flag, changes, hint="is the head up (`stune cluster up --multi-node` on it) and its port reachable?"
    )
    host, _ = parse_address(address, flag)
    heads = [n for n in nodes if n.is_head and n.alive]
    if heads and ipaddress.ip_address(heads[0].ip).is_loopback:
        raise ClusterError(
            f"the cluster at {address} is single-node (listens on 127.0.0.1 only); "
            f"restart it with `stune cluster down` and `stune cluster up --multi-node`"
        )
    changes.update({LOOPBACK_VAR: "1", "RAY_ADDRESS": None})
    args = [f"--address={address}", "--disable-usage-stats"] + _resource_args(num_cpus, num_gpus)
    ports: dict[str, int] = {}
    node_ip = ""
    with _locked():
        mine = live_nodes()
        if is_local_host(host):
            used_ips = {n.ip for n in nodes if n.alive} | {n.node_ip for n in mine}
            node_ip = next((f"127.0.0.{i}" for i in range(2, 255) if f"127.0.0.{i}" not in used_ips), "")
            if not node_ip:
                raise ClusterError("no free 127.0.0.x address left for another node on this machine")
            taken = {n.ports.get("min_worker") for n in mine}
            block = next(
                (
                    b
                    for b in range(_WORKER_BLOCK_START, _WORKER_BLOCK_END, _WORKER_BLOCK_SIZE)
                    if b not in taken and all(port_free(p) for p in range(b, b + _WORKER_BLOCK_SIZE))
                ),
                None,
            )
            if block is None:
                raise ClusterError("no free block of worker ports in 20000-29999 for another node on this machine")
            ports = {
                "node_manager": free_port(),
                "object_manager": free_port(),
                "dashboard_agent_listen": free_port(),
                "min_worker": block,
                "max_worker": block + _WORKER_BLOCK_SIZE - 1,
            }
            args += [
                f"--node-ip-address={node_ip}",
                f"--node-manager-port={ports['node_manager']}",
                f"--object-manager-port={ports['object_manager']}",
                f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
                f"--min-worker-port={ports['min_worker']}",
                f"--max-worker-port={ports['max_worker']}",
            ]
        sid, started_at, log = _ray_start(args, merged_env(changes), "worker", timeout)
        rec = NodeRecord(
            role="worker",
            sid=sid,
            started_at=started_at,
            address=address,
            node_ip=node_ip,
            multi_node=True,
            log=str(log),
            ports=ports,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        _save_nodes(mine + [rec])
    return rec


@dataclass
class StopReport:
    record: NodeRecord
    processes: int  # how many processes were ended


def stop_nodes(records: list[NodeRecord], grace: float = 5.0) -> list[StopReport]:
    """End the processes of ``records`` (SIGTERM, then SIGKILL for what outlives ``grace`` s per stage)."""
    per_node = [(rec, node_processes(rec)) for rec in records]
    # All nodes at once, stage by stage: ~6 s for a head plus local workers.
    _terminate([p for _, procs in per_node for p in procs], grace)
    reports = [StopReport(rec, len(procs)) for rec, procs in per_node]
    with _locked():
        gone = {(r.sid, r.started_at) for r in records}
        _save_nodes([n for n in load_nodes() if (n.sid, n.started_at) not in gone])
    return reports


def stop(grace: float = 5.0) -> list[StopReport]:
    """Stop every node that ``start_head``/``join`` recorded on this machine, and nothing else."""
    return stop_nodes(load_nodes(), grace)


@dataclass
class ClusterStatus:
    address: str
    nodes: list[NodeInfo]

    @property
    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]


def status(address: str | None = None) -> ClusterStatus:
    """Nodes and their CPUs/GPUs of the cluster at ``address`` (default: the one started here)."""
    addr = find_address(address)
    return ClusterStatus(address=addr, nodes=check_cluster(addr))
