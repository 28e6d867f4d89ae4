"""Helpers for tests/test_cluster.py: isolated environments, CLI runs, cleanup, listeners."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# Variables that would point a child at someone else's Ray or token.
_SCRUB = (
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "STUNE_HOME",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass
class Sandbox:
    """A private HOME and RAY_TMPDIR (short paths: Ray's unix sockets live there)."""

    root: Path
    home: Path
    raytmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls) -> "Sandbox":
        root = Path(tempfile.mkdtemp(prefix="stc-", dir="/tmp"))
        home, raytmp = root / "h", root / "r"
        home.mkdir()
        raytmp.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(
            HOME=str(home),
            RAY_TMPDIR=str(raytmp),
            PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
            RAY_USAGE_STATS_ENABLED="0",
        )
        return cls(root, home, raytmp, env)

    def with_home(self, home: Path) -> dict[str, str]:
        """The same environment with another (token-less) home."""
        home.mkdir(parents=True, exist_ok=True)
        return {**self.env, "HOME": str(home)}

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        """`python -m cluster.cli ARGS` in the sandbox (the real process, exit code and stderr)."""
        return subprocess.run(
            [sys.executable, "-m", "cluster.cli", *args],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def python(self, code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def cleanup(self) -> None:
        """Stop what the sandbox started: `stune cluster down`, then anything still using its paths."""
        try:
            self.cli("down", "--grace", "2", timeout=120)
        except Exception:  # noqa: BLE001 - the safety net below still runs
            pass
        kill_sessions_using(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


def start_moto_s3(bucket: str = "stune-test"):
    """A real S3 endpoint on 127.0.0.1 (moto's server mode) with ``bucket`` created.

    Returns the server process (the caller stops it), the AWS_* variables that point pyarrow,
    boto3 and Ray at it, and a pyarrow S3FileSystem on it (to look at what was written).
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start on 127.0.0.1:{port}")
            time.sleep(0.2)
    env = dict(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
    )
    import pyarrow.fs

    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True,
        access_key="test", secret_key="test", region="us-east-1",
    )
    fs.create_dir(bucket)
    return proc, env, fs


def kill_sessions_using(path: str, grace: float = 3.0) -> int:
    """Kill every process in a session that has a process mentioning ``path`` on its command line.

    Ray processes started by `ray start` share one session; GCS/raylet/agents
    name the temp dir in their arguments, the worker processes do not.
    """
    sids = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(path in a for a in (p.info["cmdline"] or [])):
                sids.add(os.getsid(p.pid))
        except (psutil.Error, OSError):
            continue
    sids.discard(os.getsid(0))  # never our own session
    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in sids:
                procs.append(p)
        except (psutil.Error, OSError):
            continue
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=3)
    return len(procs)


def session_processes(sid: int, since: float) -> list[psutil.Process]:
    """Live (non-zombie) processes of session ``sid`` created after ``since``."""
    out = []
    for p in psutil.process_iter(["create_time", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["create_time"] >= since - 1 and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def wait_gone(sid: int, since: float, timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while True:
        left = session_processes(sid, since)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


_SS_LINE = re.compile(r"^LISTEN\s+\d+\s+\d+\s+(\S+)\s+\S+\s*(.*)$")


def listeners(pids: set[int]) -> list[tuple[str, int]]:
    """`ss -ltnpH` rows (local address, pid) for TCP listeners owned by ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = _SS_LINE.match(line.strip())
        if not m:
            continue
        for pid in re.findall(r"pid=(\d+)", m.group(2)):
            if int(pid) in pids:
                rows.append((m.group(1), int(pid)))
    return rows


def is_loopback_listener(local: str) -> bool:
    """``127.0.0.1:P``, ``[::ffff:127.0.0.1]:P``, ``[::1]:P`` -> True; ``*:P``, ``0.0.0.0:P``, a LAN IP -> False."""
    host = local.rsplit(":", 1)[0].strip("[]")
    if host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    return host.startswith("127.") or host == "::1"


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert the CLI failed the way stune promises (exit 2, one line, no traceback); return the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# Driver run in a child process: argv[1] address ("" = local Ray), argv[2] number of 1-CPU tasks.
DRIVER = r"""
import json, os, socket, sys, time
import ray
from cluster.connect import connect, disconnect, ray_logs_path
from cluster import ClusterError
address = sys.argv[1] or None
t = time.time()
try:
    info = connect(address, num_cpus=1 if address is None else None)
except ClusterError as e:
    print(json.dumps({"error": str(e), "seconds": time.time() - t}))
    sys.exit(0)

@ray.remote(num_cpus=1)
def where():
    time.sleep(1.5)
    return ray.util.get_node_ip_address(), os.nice(0)

ips, niceness = zip(*ray.get([where.remote() for _ in range(int(sys.argv[2]))]))
import psutil
me = psutil.Process()
pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
import subprocess
ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
logs = ray_logs_path()
kept = disconnect()
import ray._private.ray_constants as rc
print(json.dumps({"describe": info.describe(), "loopback": info.loopback_only, "nodes": info.nodes,
                  "ips": ips, "task_niceness": niceness, "driver_niceness": os.nice(0), "pids": pids, "ss": ss, "seconds": time.time() - t,
                  "logs": logs, "kept_logs": kept,
                  "env_restored": "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and rc.ENABLE_RAY_CLUSTER}))
"""
