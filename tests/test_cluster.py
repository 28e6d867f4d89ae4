"""cluster/: real `ray start` processes, real sockets, no mocks.

Every test that starts Ray does it in a Sandbox (own HOME, own RAY_TMPDIR, free
ports) whose finalizer runs `stune cluster down` and then kills any process still
using the sandbox's paths, also when the test fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster import ClusterError
from cluster import storage as st
from cluster.storage import resolve_storage

sys.path.insert(0, str(Path(__file__).parent))
from cluster_helpers import (  # noqa: E402
    DRIVER,
    ROOT,
    Sandbox,
    free_port,
    is_loopback_listener,
    listeners,
    one_line_error,
    session_processes,
    start_moto_s3,
    wait_gone,
)

CONFIGS = ROOT / "cluster" / "configs"


@pytest.fixture
def sandbox(request):
    sb = Sandbox.create()
    request.addfinalizer(sb.cleanup)
    return sb


def _state(sb: Sandbox) -> list[dict]:
    f = sb.home / ".stune" / "cluster" / "state.json"
    return json.loads(f.read_text())["nodes"] if f.exists() else []


def _driver(sb: Sandbox, address: str | None, tasks: int = 1, env=None) -> dict:
    out = sb.python(DRIVER, address or "", str(tasks), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])


# --------------------------------------------------------------------------- configs


def test_aws_launcher_config():
    text = (CONFIGS / "aws-launcher.yaml").read_text()
    cfg = yaml.safe_load(text)
    # Ray's own schema check (what `ray up` runs), after filling in provider defaults.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))
    assert cfg["provider"]["type"] == "aws"
    gpu = cfg["available_node_types"]["ray.worker.gpu"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    # stune's own wheel and pins, mounted from the checkout's dist/ (stune is not on PyPI)
    assert cfg["file_mounts"]["~/stune-dist"] == "./dist"
    assert any("pip install -c ~/stune-dist/constraints.txt ~/stune-dist/stune-*.whl" in c for c in cfg["setup_commands"])
    assert "pip wheel --no-deps -w dist . && cp constraints.txt dist/" in text
    assert all("RAY_AUTH_MODE=token" in " ".join(cfg[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert "stune sweep" in text and "--address auto" in text and "--storage s3://" in text
    assert "ray up" in text and "ray exec" in text
    assert "gpus_per_trial: 0.25" in text and "gpus_per_trial: 1" in text


def test_kuberay_config():
    text = (CONFIGS / "kuberay.yaml").read_text()
    docs = {d["kind"]: d for d in yaml.safe_load_all(text) if d}
    rc, job = docs["RayCluster"], docs["RayJob"]
    assert rc["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["authOptions"]["mode"] == "token"
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    (group,) = rc["spec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert group["maxReplicas"] >= 1
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("stune sweep") and "--address auto" in entry and "--storage s3://" in entry
    # the run dir is named, and the header says how to resume that same run dir
    out, storage = entry.split("--out ")[1].split()[0], entry.split("--storage ")[1].split()[0]
    assert f"stune sweep --resume --out {out} --address auto --storage {storage}" in text
    # Both groups run the image cluster/Dockerfile builds: the same Ray, plus stune's wheel and pins.
    images = {rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"], container["image"]}
    assert images == {"MY-REGISTRY/stune:0.1.0"} and "runtimeEnvYAML" not in job["spec"]
    dockerfile = (CONFIGS.parent / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile and "docker build -f cluster/Dockerfile" in text
    assert "pip install --no-cache-dir -c /tmp/stune-dist/constraints.txt /tmp/stune-dist/stune-*.whl" in dockerfile
    assert "gpus_per_trial: 0.25" in text and "gpus_per_trial: 1" in text


def test_slurm_sbatch():
    path = CONFIGS / "slurm.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "#SBATCH --gres=gpu" in text
    assert "ray start --head" in text and "ray start --address" in text and "srun" in text
    assert "stune sweep" in text and "--storage" in text and "--address" in text
    assert "RAY_AUTH_MODE=token" in text
    assert "pip install -c constraints.txt dist/stune-*.whl" in text
    assert "gpus_per_trial: 0.25" in text and "gpus_per_trial: 1" in text
    # before the time limit the script, not every process of the job, gets a signal and passes it to the driver alone
    assert "#SBATCH --signal=B:USR1@" in text and "kill -TERM $STUNE_PID' USR1" in text
    assert 'stune sweep --resume --out "$RUN"' in text
    missing = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert missing.returncode == 2 and "usage: sbatch slurm.sbatch SWEEP.yaml" in missing.stderr, missing.stderr


# --------------------------------------------------------------------------- storage


def test_resolve_storage(tmp_path):
    assert resolve_storage(None) is None
    assert resolve_storage(str(tmp_path / "runs")) == str(tmp_path / "runs")
    assert resolve_storage("rel/runs") == str(Path("rel/runs").resolve())
    assert resolve_storage(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    uri = "s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http"
    assert resolve_storage(uri) == uri
    assert resolve_storage("gs://bucket/p") == "gs://bucket/p"
    assert resolve_storage("mock:///x") == "mock:///x"  # a scheme only pyarrow knows
    for bad in ("foo://x", "s3://", ""):
        with pytest.raises(ClusterError, match="--storage"):
            resolve_storage(bad)
    with pytest.raises(ClusterError, match="unknown scheme"):
        resolve_storage("foo://x")


def _storage_roundtrip(base: str, tmp_path: Path) -> None:
    st.write_text(st.join(base, "a", "summary.json"), '{"ok": 1}')
    assert st.exists(st.join(base, "a", "summary.json"))
    assert json.loads(st.read_text(st.join(base, "a", "summary.json"))) == {"ok": 1}
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (src / "config.json").write_text("{}")
    st.upload_dir(src, st.join(base, "model"))
    got = st.download_dir(st.join(base, "model"), tmp_path / "back")
    assert (got / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    assert (got / "config.json").read_text() == "{}"
    with pytest.raises(ClusterError):
        st.download_dir(st.join(base, "missing"), tmp_path / "nope")


def test_storage_helpers_local(tmp_path):
    _storage_roundtrip(str(tmp_path / "store"), tmp_path)


@pytest.fixture
def moto_s3(request, monkeypatch):
    proc, env, _ = start_moto_s3()
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return "s3://stune-test/runs"


def test_storage_helpers_s3(moto_s3, tmp_path):
    assert resolve_storage(moto_s3) == moto_s3
    _storage_roundtrip(moto_s3, tmp_path)


def test_a_run_dir_in_s3_is_leased_to_one_sweep_and_a_killed_sweeps_lease_lapses(moto_s3, monkeypatch):
    from tune import rundir
    from tune.rundir import RUNNING, RunDir, SweepRunning

    monkeypatch.setattr(rundir, "LEASE_REFRESH_S", 0.5)
    run_dir = RunDir.open(f"{moto_s3}/leased")
    first = SweepRunning(run_dir)
    first.take()
    try:
        holder = SweepRunning(run_dir).holder()
        assert holder and f"pid {os.getpid()} on " in holder and "lapses 45 s" in holder, holder
        with pytest.raises(RuntimeError, match=f"pid {os.getpid()} on "):
            SweepRunning(run_dir).take()
        renewed = run_dir.read_json(RUNNING)["renewed"]
        time.sleep(2)
        assert run_dir.read_json(RUNNING)["renewed"] > renewed, "a running sweep renews its lease"
    finally:
        first.release()
    assert not run_dir.exists(RUNNING) and SweepRunning(run_dir).holder() is None
    # A sweep killed without releasing it: its lease is in force until it lapses, then taken over.
    gone = {"holder": "pid 1 on a-lost-node", "token": "gone"}
    run_dir.write_json(RUNNING, {**gone, "renewed": time.time() - 10})
    assert "a-lost-node, last seen 10 s ago" in SweepRunning(run_dir).holder()
    run_dir.write_json(RUNNING, {**gone, "renewed": time.time() - rundir.LEASE_LAPSES_S - 1})
    assert SweepRunning(run_dir).holder() is None
    run_dir.write_json(RUNNING, {**gone, "renewed": "yesterday"})  # not a lease stune wrote: no one holds the run dir
    assert SweepRunning(run_dir).holder() is None
    taker = SweepRunning(run_dir)
    taker.take()
    try:
        assert run_dir.read_json(RUNNING)["token"] not in (None, "gone")
    finally:
        taker.release()
    assert not run_dir.exists(RUNNING)


# --------------------------------------------------------------------------- fast errors


def test_connect_nothing_listening_is_fast():
    t = time.time()
    with pytest.raises(ClusterError) as e:
        from cluster.connect import connect

        connect("127.0.0.1:1")
    assert time.time() - t < 5
    msg = str(e.value)
    assert "--address" in msg and "stune cluster up" in msg and "\n" not in msg


def test_connect_bad_address_and_not_ray():
    from cluster.connect import connect

    with pytest.raises(ClusterError, match="--address"):
        connect("ray://10.0.0.1:10001")
    with pytest.raises(ClusterError, match="--address"):
        connect("nohostport")
    # Something listens, but it is not a Ray GCS: fails in seconds, not Ray's ~40 s.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        t = time.time()
        with pytest.raises(ClusterError, match="not a Ray cluster"):
            connect(f"127.0.0.1:{srv.getsockname()[1]}")
        assert time.time() - t < 10
    finally:
        srv.close()


def test_cli_errors_without_ray(sandbox):
    # join: nothing listening
    line = one_line_error(sandbox.cli("join", f"127.0.0.1:{free_port()}"))
    assert "nothing is listening" in line
    # status: no cluster anywhere in this sandbox
    line = one_line_error(sandbox.cli("status"))
    assert "stune cluster up" in line
    # up: port taken by something else (refused before Ray starts)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        line = one_line_error(sandbox.cli("up", "--port", str(srv.getsockname()[1])))
        assert "is taken" in line and "--port" in line
    finally:
        srv.close()
    # --multi-node never runs without auth
    line = one_line_error(sandbox.cli("up", "--multi-node", env={**sandbox.env, "RAY_AUTH_MODE": "disabled"}))
    assert "token" in line
    # join: --token-file that does not exist
    line = one_line_error(sandbox.cli("join", "127.0.0.1:6379", "--token-file", str(sandbox.root / "nope")))
    assert "--token-file" in line
    # down with nothing started: fine
    out = sandbox.cli("down")
    assert out.returncode == 0 and "Nothing to stop" in out.stdout
    assert not (sandbox.raytmp / "ray").exists() or not any((sandbox.raytmp / "ray").glob("session_*"))


# --------------------------------------------------------------------------- real clusters


@pytest.mark.slow
def test_single_node_up_status_down(sandbox):
    port = free_port()
    up = sandbox.cli("up", "--port", str(port), "--num-cpus", "1")
    assert up.returncode == 0, up.stderr
    addr = f"127.0.0.1:{port}"
    assert f"Ray head started at {addr}" in up.stdout
    assert "127.0.0.1 only" in up.stdout
    assert str(sandbox.home / ".ray" / "auth_token") in up.stdout
    assert f"stune sweep CONFIG --address {addr}" in up.stdout
    (head,) = _state(sandbox)
    procs = session_processes(head["sid"], head["started_at"])
    names = {p.name() for p in procs}
    assert {"gcs_server", "raylet"} <= names

    # No Ray port of this node listens beyond loopback.
    rows = listeners({p.pid for p in procs})
    assert any(local.endswith(f":{port}") for local, _ in rows), rows
    assert rows and all(is_loopback_listener(local) for local, _ in rows), rows

    # Twice: refused, one line.
    assert "already running" in one_line_error(sandbox.cli("up", "--port", str(free_port())))
    # A single-node head cannot be joined.
    assert "single-node" in one_line_error(sandbox.cli("join", addr))

    st_out = sandbox.cli("status")
    assert st_out.returncode == 0, st_out.stderr
    assert addr in st_out.stdout and "1 node(s) alive" in st_out.stdout

    # A driver finds it with --address auto, runs a task, and stays on loopback too.
    res = _driver(sandbox, "auto")
    assert res["loopback"] and res["nodes"] == 1, res
    driver_rows = [ln for ln in res["ss"].splitlines() if f"pid={res['pids'][0]}," in ln]
    assert driver_rows and all(is_loopback_listener(ln.split()[3]) for ln in driver_rows), driver_rows

    down = sandbox.cli("down", "--grace", "3")
    assert down.returncode == 0 and "Stopped head" in down.stdout, down.stderr
    assert wait_gone(head["sid"], head["started_at"]) == []
    assert _state(sandbox) == []


@pytest.mark.slow
def test_multi_node_join_on_one_machine(sandbox):
    port = free_port()
    up = sandbox.cli("up", "--multi-node", "--port", str(port), "--num-cpus", "1")
    assert up.returncode == 0, up.stderr
    assert "all interfaces" in up.stdout and "token authentication is required" in up.stdout
    addr = up.stdout.split("Ray head started at ", 1)[1].split(",", 1)[0]
    assert addr.endswith(f":{port}")
    assert f"stune cluster join {addr}" in up.stdout
    assert f"stune sweep CONFIG --address {addr}" in up.stdout
    (head,) = _state(sandbox)
    gcs = [local for local, _ in listeners({p.pid for p in session_processes(head["sid"], head["started_at"])})
           if local.endswith(f":{port}")]
    assert gcs and not is_loopback_listener(gcs[0]), gcs  # reachable from other machines

    join = sandbox.cli("join", f"127.0.0.1:{port}", "--num-cpus", "1")
    assert join.returncode == 0, join.stderr
    assert "as 127.0.0.2" in join.stdout and "2 node(s) alive" in join.stdout

    status = sandbox.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    nodes = [n for n in json.loads(status.stdout)["nodes"] if n["alive"]]
    assert len(nodes) == 2 and sum(n["cpus"] for n in nodes) == 2
    assert {n["is_head"] for n in nodes} == {True, False}

    # Two 1-CPU tasks at once must land on both nodes.
    res = _driver(sandbox, addr, tasks=2)
    assert res["nodes"] == 2 and not res["loopback"], res
    assert len(set(res["ips"])) == 2, res
    # Trials on nodes stune started run at the priority the nodes were started with, not Ray's nice 15.
    assert set(res["task_niceness"]) == {res["driver_niceness"]}, res

    # Without the token: refused quickly, from the CLI and from connect().
    stranger = sandbox.with_home(sandbox.root / "stranger")
    assert "requires a token" in one_line_error(sandbox.cli("status", "--address", addr, env=stranger))
    assert "requires a token" in one_line_error(sandbox.cli("join", addr, env=stranger))
    res = _driver(sandbox, addr, env=stranger)
    assert "requires a token" in res["error"] and res["seconds"] < 10, res
    # With a wrong token: join refused before starting anything.
    wrong = sandbox.root / "wrong_token"
    wrong.write_text("0" * 64)
    t = time.time()
    assert "refused this machine's token" in one_line_error(
        sandbox.cli("join", f"127.0.0.1:{port}", "--token-file", str(wrong))
    )
    assert time.time() - t < 15
    assert len(_state(sandbox)) == 2

    records = _state(sandbox)
    down = sandbox.cli("down", "--grace", "3")
    assert down.returncode == 0, down.stderr
    assert "Stopped head" in down.stdout and "Stopped worker" in down.stdout
    for rec in records:
        assert wait_gone(rec["sid"], rec["started_at"]) == []


@pytest.mark.slow
def test_connect_local_is_loopback_only(sandbox):
    res = _driver(sandbox, None)
    assert res["loopback"] and res["nodes"] == 1, res
    assert res["env_restored"], res  # disconnect() undid the loopback-only setting
    assert set(res["task_niceness"]) == {res["driver_niceness"]}, res  # not reniced to 15 (starved beside other work)
    mine = set(res["pids"])
    own = [ln.split()[3] for ln in res["ss"].splitlines() if any(f"pid={p}," in ln for p in mine)]
    assert own, res["ss"]
    assert all(is_loopback_listener(local) for local in own), own
    # Ray never removes a session's folder (17-33 MB of logs and sockets a sweep): a private Ray's goes with it,
    # from where Ray would have put it (RAY_TMPDIR) ...
    assert res["logs"] and res["logs"].startswith(str(sandbox.raytmp / "ray" / "session_2")) and res["kept_logs"] is None, res
    assert not list(sandbox.raytmp.glob("ray/session_2*")), sorted(p.name for p in (sandbox.raytmp / "ray").iterdir())
    # ... unless its logs are asked for
    res = _driver(sandbox, None, env={**sandbox.env, "STUNE_KEEP_RAY_LOGS": "1"})
    assert res["kept_logs"] == res["logs"] and (Path(res["logs"]) / "raylet.out").is_file(), res
