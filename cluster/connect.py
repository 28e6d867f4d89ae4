"""Connect the sweep driver to Ray: a private loopback-only Ray, or an existing cluster.

Used by the sweep engine before it builds the ``Tuner``::

    from cluster.connect import connect, ClusterError
    info = connect(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    print(info.describe())

* ``connect(None)`` starts Ray inside this process (``ray.init(address="local")``)
  with every port on 127.0.0.1 (see :mod:`cluster.local` for how). Ray never removes
  a session's folder (logs, sockets, spilled objects: 17-33 MB a sweep, under
  ``$RAY_TMPDIR/ray``): :func:`disconnect` removes this one's (kept with
  ``keep_ray_logs`` or ``STUNE_KEEP_RAY_LOGS=1``).
* ``connect("auto")`` / ``connect("HOST:PORT")`` joins a running cluster as a
  driver. It checks first (TCP, gRPC, token; about a second) and raises
  :class:`ClusterError` naming ``--address`` instead of letting ``ray.init``
  retry for 20+ s. The token is sent whenever this machine has one.

Side effects, process-wide (Ray has no per-connection settings for these):
``RAY_AUTH_MODE``, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` and Ray's in-memory
copies of them are set to match the target; :func:`disconnect` restores them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Iterator

from .auth import AUTH_MODE_VAR, client_auth_env
from .errors import ClusterError
from .local import LOOPBACK_VAR, WORKER_NICENESS, check_cluster, find_address
from .probe import parse_address

__all__ = [
    "ClusterError", "ConnectionInfo", "KEEP_RAY_LOGS_VAR", "connect", "disconnect", "ray_logs_path",
    "ray_starts_shielded_from_ctrl_c", "stop_ray_and_its_agents", "unfit_resources",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionInfo:
    """Where this process's Ray runs."""

    address: str | None  # GCS address HOST:PORT; None for the in-process local Ray
    local: bool  # True: Ray was started inside this process and ends with it
    loopback_only: bool  # True: all Ray ports of this node listen on 127.0.0.1 only
    token_auth: bool  # True: this client presents a Ray auth token
    nodes: int  # alive nodes
    cpus: float  # total CPUs of the cluster
    gpus: float  # total GPUs of the cluster

    def describe(self) -> str:
        """One line for logs: where trials run."""
        where = "local Ray in this process" if self.local else f"Ray cluster at {self.address}"
        net = "loopback only" if self.loopback_only else "network"
        auth = "token auth" if self.token_auth else "no auth"
        return f"{where}: {self.nodes} node(s), {self.cpus:g} CPU, {self.gpus:g} GPU ({net}, {auth})"


_current: tuple[tuple, ConnectionInfo] | None = None
# Values the variables we touch had before connect(); disconnect() puts them back.
_saved_env: dict[str, str | None] | None = None
_TOUCHED = (LOOPBACK_VAR, AUTH_MODE_VAR, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# The session folder of the private local Ray this process started (None: none, or kept).
_private_session_dir: str | None = None
_starting_local_ray = False  # ray.init(address="local") under way: a failed start leaves a session folder too
KEEP_RAY_LOGS_VAR = "STUNE_KEEP_RAY_LOGS"  # set (to anything but 0/false): a private Ray's logs are kept


def _set_loopback_mode(on: bool | None) -> None:
    """Loopback-only (True), cluster mode (False) or Ray's default (None) for this process.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, into
    ``ray_constants.ENABLE_RAY_CLUSTER``; keep the variable (inherited by the
    raylet and workers of a local Ray) and the module constant in step.
    """
    if on is None:
        os.environ.pop(LOOPBACK_VAR, None)
    else:
        os.environ[LOOPBACK_VAR] = "0" if on else "1"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = (not constants.IS_WINDOWS_OR_OSX) if on is None else not on


def _apply_env(changes: dict[str, str | None]) -> None:
    for k, v in changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _refresh_ray_auth() -> None:
    """Make an already-imported Ray re-read RAY_AUTH_MODE / the token (it caches both).

    Uses the same private calls as Ray's own ``_enable_token_auth``; harmless if
    they move (then the variables only take effect in a fresh process).
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # noqa: BLE001
        log.debug("could not refresh Ray's auth settings in-process", exc_info=True)


def _info(address: str | None, local: bool, loopback: bool) -> ConnectionInfo:
    import ray

    res = ray.cluster_resources()
    return ConnectionInfo(
        address=address,
        local=local,
        loopback_only=loopback,
        token_auth=os.environ.get(AUTH_MODE_VAR, "").lower() == "token",
        nodes=sum(1 for n in ray.nodes() if n.get("Alive")),
        cpus=float(res.get("CPU", 0.0)),
        gpus=float(res.get("GPU", 0.0)),
    )


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log_to_driver: bool = True,
) -> ConnectionInfo:
    """Initialise Ray in this process for a sweep and say where trials will run.

    Args:
        address: ``None`` (or ``"local"``) for a private Ray on this machine (loopback only),
            ``"auto"`` for the cluster found on this machine (``RAY_ADDRESS``,
            ``stune cluster up``, or the last ``ray start``), or ``"HOST:PORT"``
            of a head's GCS.
        log_to_driver: print the workers' stdout/stderr in this process.
        num_cpus, num_gpus: resources of the private local Ray (default: what
            Ray detects). Ignored, with a warning, for an existing cluster,
            whose resources were set by ``stune cluster up/join``.

    Calling it again with the same arguments returns the same connection;
    different arguments shut the previous one down first.

    Raises:
        ClusterError: one line naming ``--address`` and the fix (nothing
            listening, not a Ray cluster, token refused, Ray already
            initialised by someone else).
    """
    global _current, _saved_env, _private_session_dir, _starting_local_ray
    import ray

    target = None if address in (None, "", "local") else find_address(address)
    key = (target, num_cpus, num_gpus)
    if ray.is_initialized():
        if _current is not None and _current[0] == key:
            return _current[1]
        if _current is None:
            raise ClusterError(
                "Ray is already initialised in this process (not by stune); call ray.shutdown() before connect()"
            )
        disconnect()

    _saved_env = {k: os.environ.get(k) for k in _TOUCHED}
    # Only a Ray this call starts has a session folder of its own: a cluster's is never removed.
    _starting_local_ray = target is None
    if target is None:
        _set_loopback_mode(True)
        # Workers Ray starts ahead of time go unused by a sweep (Ray Tune's trial actors carry a
        # runtime_env, so they get workers of their own) and compete with its first trials for
        # the CPU: 1 s later first training step on 2 cores (bench/overhead.py).
        os.environ.setdefault("RAY_enable_worker_prestart", "0")
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        for var, value in WORKER_NICENESS.items():
            os.environ.setdefault(var, value)
        ray.init(
            address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
            log_to_driver=log_to_driver, logging_level=_ray_logging_level(log_to_driver),
        )
        _private_session_dir, _starting_local_ray = _ray_session_dir(), False
        log.debug("the local Ray's logs: %s", ray_logs_path())
        info = _info(None, local=True, loopback=True)
    else:
        if num_cpus is not None or num_gpus is not None:
            log.warning(
                "num_cpus/num_gpus apply to a local Ray only; the cluster at %s keeps the resources "
                "its nodes were started with (stune cluster up/join --num-cpus/--num-gpus)",
                target,
            )
        changes = client_auth_env()
        nodes = check_cluster(target, "--address", changes)
        host, _ = parse_address(target)
        try:
            host_is_loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            host_is_loopback = host == "localhost"
        # A head started single-node registers as 127.0.0.1; a driver must then use loopback too.
        loopback = host_is_loopback and any(
            n.alive and n.is_head and ipaddress.ip_address(n.ip).is_loopback for n in nodes
        )
        _apply_env(changes)
        _set_loopback_mode(loopback)
        _refresh_ray_auth()
        try:
            ray.init(address=target, log_to_driver=log_to_driver, logging_level=_ray_logging_level(log_to_driver))
        except (ConnectionError, RuntimeError) as e:
            disconnect()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ClusterError(f"--address {target}: could not connect: {first}") from None
        info = _info(target, local=False, loopback=loopback)
    _current = (key, info)
    return info


def _ray_logging_level(log_to_driver: bool) -> int:
    """Ray's own start-up lines ("Started a local Ray instance", the token-auth notice) only
    when the caller wants the workers' output too; quiet callers print their own summary."""
    import logging

    return logging.INFO if log_to_driver else logging.ERROR


def unfit_resources(cpus: float, gpus: float) -> dict[str, tuple[float, float]]:
    """What no alive node of the cluster has for one trial (busy or not: trials queue for
    resources that exist): ``{"CPU"/"GPU": (asked, the most one node has)}``, empty if one fits."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return {}
    both = {kind: (asked, max((r.get(kind, 0) for r in nodes), default=0)) for kind, asked in (("CPU", cpus), ("GPU", gpus))}
    return {kind: (asked, most) for kind, (asked, most) in both.items() if asked > most} or both  # or: no node has both


def _ray_session_dir() -> str | None:
    """The session folder of the Ray node this process started or joined (Ray's private API, so
    None if it moves: the folder is then left, as Ray leaves it)."""
    try:
        from ray._private import worker

        node = worker._global_node
        return node.get_session_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001
        return None


def ray_logs_path() -> str | None:
    """The logs folder of the private local Ray this process started, while it is there."""
    return os.path.join(_private_session_dir, "logs") if _private_session_dir else None


def _keep_ray_logs_asked() -> bool:
    return os.environ.get(KEEP_RAY_LOGS_VAR, "").strip().lower() not in ("", "0", "false", "no")


def _remove_private_session_dir(keep: bool) -> str | None:
    """After Ray stopped: remove the private Ray's session folder, or return its logs' path if kept."""
    global _private_session_dir
    if _private_session_dir is None:
        return None
    kept = ray_logs_path() if keep or _keep_ray_logs_asked() else None
    if kept is None:
        # A worker that is still exiting may write one last line meanwhile: a second pass gets it.
        for _ in range(2):
            shutil.rmtree(_private_session_dir, ignore_errors=True)
    _private_session_dir = None
    return kept


def disconnect(keep_ray_logs: bool = False) -> str | None:
    """Shut down this process's Ray connection (and the local Ray, if :func:`connect` started one).

    Also restores the environment variables :func:`connect` changed, and removes a local Ray's
    folder unless ``keep_ray_logs`` (or ``STUNE_KEEP_RAY_LOGS=1``). Returns the path of the logs
    it kept, else None.
    """
    global _current, _saved_env
    import ray

    if ray.is_initialized():
        ray.shutdown()
    kept = _remove_private_session_dir(keep_ray_logs)
    _current = None
    if _saved_env is not None:
        before = _saved_env.get(LOOPBACK_VAR)
        _set_loopback_mode(None if before is None else before.strip() in ("0", "false", "False"))
        _apply_env({k: v for k, v in _saved_env.items() if k != LOOPBACK_VAR})
        _saved_env = None
    return kept


@contextlib.contextmanager
def ray_starts_shielded_from_ctrl_c() -> Iterator[None]:
    """Around ``ray.init``: SIGINT is blocked, and the processes Ray starts (GCS, raylet, its
    agents, later the workers) inherit the block. A terminal's Ctrl-C goes to the whole process
    group: without this, it killed the raylet half-way and left its agents running with no parent.
    Now it reaches stune alone, when the block ends (a Ctrl-C meanwhile is kept pending, not lost),
    and stune stops Ray in order."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    # The mask is per thread and another thread may take the signal: a handler that only notes it
    # keeps ray.init from being cut half-way whichever thread does.
    pending: list[int] = []
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # runs the handler of a pending SIGINT
        signal.signal(signal.SIGINT, previous_handler)
    if pending:
        raise KeyboardInterrupt


def stop_ray_and_its_agents(keep_ray_logs: bool = False) -> str | None:
    """``ray.shutdown`` (it stops the processes of a local Ray even when its start was cut short,
    which :func:`disconnect` skips), then end whatever the local raylet had started
    and left running: stopped while its agents still start up, Ray leaves them behind, parentless.
    A local Ray's folder goes as with :func:`disconnect`; returns the path of the logs it kept."""
    global _private_session_dir, _starting_local_ray
    import psutil
    import ray

    if _starting_local_ray:  # connect() was starting a private Ray: its session folder is ours to remove
        _private_session_dir, _starting_local_ray = _ray_session_dir(), False
    started: list = []
    try:  # Ray's own record of the processes it started here (private; best effort)
        from ray._private import ray_constants, worker

        node = worker._global_node
        for info in (node.all_processes if node is not None else {}).get(ray_constants.PROCESS_TYPE_RAYLET, []):
            started += psutil.Process(info.process.pid).children(recursive=True)
    except Exception:  # noqa: BLE001
        log.debug("could not list the raylet's processes", exc_info=True)
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - already failing; the original error is the one to show
        log.debug("ray.shutdown failed", exc_info=True)
    _, alive = psutil.wait_procs(started, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return _remove_private_session_dir(keep_ray_logs)
