"""Reliability (docs/reliability.md): the faults a sweep survives, each caused for real.

Two real ``stune sweep`` runs, each a subprocess in its own session so that every Ray process it
starts shares the session id and can be found and killed afterwards, also when a test fails:

- FAULTS, 4 trials in a row on a tiny MPNet (whose attention memory grows with batch x seq^2,
  like all-mpnet-base-v2's): the 1st trial's worker process is SIGKILLed right after its first
  checkpoint; the 2nd has an absurd learning rate and weight decay (its loss becomes NaN); the
  3rd a batch and sequence length whose attention needs twice this machine's RAM (the allocation
  really fails); ``ss -ltnp`` is read while the 1st trains.
- LONG, 50 two-step trials (TPE, two at a time): Ctrl-C (SIGINT to the process group, as a
  terminal sends it) after 8, ``--resume``, SIGKILL of the driver after 25, ``--resume`` again;
  checkpoint folders are counted all along.

The rest are quick: failed writes (a real EFBIG from RLIMIT_FSIZE), run-dir paths, safe YAML,
trust_remote_code.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cli import STUNE, assert_user_error, run_stune
from cluster_helpers import is_loopback_listener, listeners
from tiny import scored_pairs, words, write_csv

ROOT = Path(__file__).resolve().parents[1]
_SCRUB = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
DONE = ("completed", "stopped_early", "errored")


# --------------------------------------------------------------------------- processes


class SweepProcess:
    """``stune sweep ARGS`` started in a new session: the driver, Ray's GCS, raylet, agents and
    workers all carry its session id (= the driver's pid), even after the driver is gone."""

    def __init__(self, cwd: Path, name: str, *args):
        self.name = name
        self.raytmp = Path(tempfile.mkdtemp(prefix="srl-", dir="/tmp"))  # short: Ray's socket paths live here
        self.stdout_path, self.stderr_path = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(HF_HUB_OFFLINE="1", RAY_TMPDIR=str(self.raytmp), RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false")
        self.tmp = cwd / "tmp"  # the trials' scratch folders, apart from other tests'
        self.tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(self.tmp)
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [STUNE, "sweep", *map(str, args)], cwd=cwd, env=env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.sid = self.proc.pid

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getsid(p.pid) == self.sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self) -> str:
        return f"--- {self.name} stdout ---\n{self.stdout()[-2000:]}\n--- {self.name} stderr ---\n{self.stderr()[-5000:]}"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s\n{self.tail()}") from None

    def wait_session_gone(self, timeout: float) -> list[str]:
        """Names of the session's processes still alive after ``timeout`` s (none is the goal)."""
        deadline = time.time() + timeout
        while (left := self.processes()) and time.time() < deadline:
            time.sleep(0.2)
        return sorted(_name(p) for p in left)

    def kill_all(self) -> list[str]:
        """SIGKILL every process of the session (the driver included); returns what was alive."""
        killed: list[str] = []
        for _ in range(20):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    killed.append(_name(p))
                    p.kill()
            psutil.wait_procs(procs, timeout=3)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        shutil.rmtree(self.raytmp, ignore_errors=True)
        return killed


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"


@pytest.fixture(scope="module")
def start_sweep():
    """``start_sweep(cwd, name, *args)``; everything started is killed at the end, also on failure."""
    started: list[SweepProcess] = []

    def start(cwd: Path, name: str, *args) -> SweepProcess:
        sweep = SweepProcess(cwd, name, *args)
        started.append(sweep)
        return sweep

    yield start
    for sweep in started:
        sweep.kill_all()


def wait_until(condition, sweep: SweepProcess, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if sweep.proc.poll() is not None:
            value = condition()
            if value:
                return value
            raise AssertionError(f"{sweep.name} exited ({sweep.proc.returncode}) before {what}\n{sweep.tail()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{sweep.tail()}")


def read_trials(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "trials.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def done(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["status"] in DONE]


def results(run: Path, trial_id: str) -> list[dict]:
    path = run / f"trial_{trial_id}" / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def checkpoint_dirs(run: Path) -> list[Path]:
    return [p for p in run.glob("trial_*/checkpoint_*") if p.is_dir()]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------- FAULTS sweep

OOM_SEQ, OOM_HEADS = 4096, 16  # attention scores per row: heads x seq^2 floats (1 GiB)
VICTIM_LR, NAN_LR, NORMAL_LR = 1.0e-3, 1.0, 3.0e-3


def make_mpnet(path: Path, max_len: int, heads: int) -> Path:
    """A tiny MPNet SentenceTransformer (MPNet computes attention with plain matmuls: its memory
    grows with batch x heads x seq^2, as all-mpnet-base-v2's does)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    torch.manual_seed(0)
    raw = path.parent / (path.name + "-hf")
    raw.mkdir(parents=True, exist_ok=True)
    vocab = raw / "vocab.txt"
    vocab.write_text("\n".join(["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *words()]) + "\n")
    tokenizer = MPNetTokenizer(vocab=str(vocab))
    config = MPNetConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=64,
        max_position_embeddings=max_len + 2, pad_token_id=tokenizer.pad_token_id,
    )
    MPNetModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=128)
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")]).save(str(path))
    return path


def oom_batch(seq: int, heads: int) -> int:
    """Rows per batch whose attention scores alone need twice this machine's RAM + swap: under
    Linux's default overcommit heuristic that allocation is refused at once (ENOMEM)."""
    total = psutil.virtual_memory().total + psutil.swap_memory().total
    return max(8, math.ceil(2 * total / (heads * seq * seq * 4)))


@pytest.fixture(scope="module")
def faults(start_sweep, scored_data, tmp_path_factory):
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    if overcommit.exists() and overcommit.read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1: an oversized allocation would succeed and wake the OOM killer instead of failing")
    batch = oom_batch(OOM_SEQ, OOM_HEADS)
    if batch > 160:
        pytest.skip(f"this machine's RAM needs a batch of {batch} long rows to run out of memory; too slow for a test")
    root = tmp_path_factory.mktemp("faults")
    model = make_mpnet(root / "mpnet", OOM_SEQ, OOM_HEADS)
    rng = random.Random(0)
    vocab = words()
    long_text = lambda: " ".join(rng.choice(vocab) for _ in range(OOM_SEQ - 40))  # noqa: E731
    short = scored_pairs(96 + batch, seed=1)
    # A third of the rows have a long first sentence: any batch of the OOM trial pads to ~OOM_SEQ tokens.
    train = write_csv(root / "train.csv", ["sentence1", "sentence2", "score"],
                      short[:96] + [(long_text(), b, s) for _, b, s in short[96:]])
    normal = {"weight_decay": 0.0, "per_device_train_batch_size": 8, "max_seq_length": 32}
    config = {
        "model": str(model), "data": {"train": str(train), "eval": scored_data["eval"]}, "loss": "CoSENTLoss",
        "max_steps": 30, "evaluations_per_trial": 3, "max_seq_length": 32, "trials": 4, "max_concurrent_trials": 1,
        "scheduler": "none", "searcher": "random", "seed": 1, "max_failures": 2,
        "search": {
            "losses": ["CoSENTLoss"], "CoSENTLoss": {"scale": 20.0}, "warmup_ratio": 0.0,
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "weight_decay": {"low": 0.0, "high": 0.01},
            "per_device_train_batch_size": {"low": 8, "high": 16}, "max_seq_length": {"low": 32, "high": 64},
        },
        # Points outside the search ranges are taken as given (Optuna warns): one trial per fault.
        "initial_points": [
            {"learning_rate": VICTIM_LR, **normal, "per_device_train_batch_size": 16, "max_seq_length": 64},  # slower: time to kill it
            {**normal, "learning_rate": NAN_LR, "weight_decay": 1.0e30},
            {"learning_rate": VICTIM_LR, "weight_decay": 0.0, "per_device_train_batch_size": batch, "max_seq_length": OOM_SEQ},
            {"learning_rate": NORMAL_LR, **normal},
        ],
    }
    run = root / "run"
    sweep = start_sweep(root, "faults", write_config(root / "faults.yaml", config), "--out", run)

    def victim_first_result():
        for path in run.glob("trial_*/result.json"):
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[0])["config"].get("learning_rate") == VICTIM_LR \
                    and json.loads(lines[0])["config"].get("max_seq_length") == 64:
                return json.loads(lines[0])
        return None

    first = wait_until(victim_first_result, sweep, 600, "the first trial's first evaluation")
    pids = {p.pid for p in sweep.processes()}
    listening = listeners(pids)  # ss -ltnpH while the trial trains
    os.kill(first["pid"], signal.SIGKILL)  # the trial's worker process, mid-training
    killed_at = time.time()
    rc = sweep.wait(600)
    return {
        "run": run, "sweep": sweep, "rc": rc, "batch": batch, "victim": first, "killed_at": killed_at,
        "listening": listening, "pids": pids, "rows": {r["trial_id"]: r for r in read_trials(run)},
        "summary": json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None,
        "left_after_exit": sweep.wait_session_gone(20),
    }


def trial_with_lr(faults, lr: float, **match) -> dict[str, str]:
    rows = [r for r in faults["rows"].values() if float(r["learning_rate"]) == lr
            and all(int(float(r[k])) == v for k, v in match.items())]
    assert len(rows) == 1, (lr, match, faults["rows"])
    return rows[0]


@pytest.mark.slow
def test_faulty_sweep_finishes_and_cleans_up(faults):
    sweep = faults["sweep"]
    assert faults["rc"] == 0, sweep.tail()
    assert "ActorDiedError" in sweep.stderr(), "Ray reports the killed worker (with its traceback) and retries"
    assert faults["left_after_exit"] == [], faults["left_after_exit"]
    counts = faults["summary"]["counts"]
    assert (counts["completed"], counts["errored"], counts["running"], counts["pending"]) == (2, 2, 0, 0), counts


@pytest.mark.slow
def test_worker_killed_mid_trial_resumes_from_its_last_checkpoint(faults):
    run, victim = faults["run"], faults["victim"]
    row = faults["rows"][victim["trial_id"]]
    assert row["status"] == "completed" and row["steps"] == row["total_steps"] == "30", row
    reported = results(run, victim["trial_id"])
    steps = [r["step"] for r in reported]
    # Killed after the step-10 checkpoint: the new worker went on from step 10, it did not start over.
    assert steps == [10, 20, 30], steps
    assert len({r["pid"] for r in reported}) == 2, "the trial should have finished in a new worker process"
    assert victim["pid"] not in {r["pid"] for r in reported[1:]}
    error_file = run / f"trial_{victim['trial_id']}" / "error.txt"
    assert error_file.exists() and "Failure # 1" in error_file.read_text(), "Ray saw the crash and retried the trial"
    assert not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE
    # No completed trial is lost and the best is still the true best, over every report of every trial.
    best = faults["summary"]["best"]
    every_report = [r["spearman_cosine"] for tid in faults["rows"] for r in results(run, tid) if "spearman_cosine" in r]
    assert best["spearman_cosine"] == pytest.approx(max(every_report), abs=1e-9)
    assert best["trial_id"] in {t for t, r in faults["rows"].items() if r["status"] == "completed"}


@pytest.mark.slow
def test_nan_loss_ends_only_that_trial_at_once_and_never_becomes_best(faults):
    run = faults["run"]
    row = trial_with_lr(faults, NAN_LR)
    assert row["status"] == "errored", row
    assert "nan" in row["error"].lower() and "lower learning_rate" in row["error"], row["error"]
    assert row["spearman_cosine"] == "", "a NaN trial has no score"
    # Ended at once: one attempt, Ray never saw an exception (no error.txt, so no retry), one report (the error).
    assert not (run / f"trial_{row['trial_id']}" / "error.txt").exists()
    assert [list(r) for r in results(run, row["trial_id"]) if "stune_error" in r] and len(results(run, row["trial_id"])) == 1
    assert faults["summary"]["best"]["trial_id"] != row["trial_id"]
    assert math.isfinite(faults["summary"]["best"]["spearman_cosine"])
    # the sweep went on: the trial after it completed
    assert trial_with_lr(faults, NORMAL_LR)["status"] == "completed"


@pytest.mark.slow
def test_out_of_memory_is_that_trials_error_with_a_hint(faults):
    run, batch = faults["run"], faults["batch"]
    row = trial_with_lr(faults, VICTIM_LR, per_device_train_batch_size=batch)
    assert row["status"] == "errored", row
    assert f"out of memory at per_device_train_batch_size={batch}" in row["error"], row["error"]
    assert "lower it" in row["error"], row["error"]
    assert not (run / f"trial_{row['trial_id']}" / "error.txt").exists(), "an out-of-memory trial is not retried"
    assert len(results(run, row["trial_id"])) == 1


@pytest.mark.slow
def test_in_process_sweep_listens_on_loopback_only(faults):
    rows = faults["listening"]
    assert rows, f"no TCP listener found for the sweep's processes {sorted(faults['pids'])}"
    outside = [(addr, pid) for addr, pid in rows if not is_loopback_listener(addr)]
    assert not outside, f"listening beyond loopback: {outside}"
    assert "loopback only" in faults["sweep"].stderr()


# --------------------------------------------------------------------------- LONG sweep

LONG_TRIALS, LONG_CONCURRENCY = 50, 2


@pytest.fixture(scope="module")
def long_run(start_sweep, tiny_model, scored_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    config = {
        "model": tiny_model, "data": scored_data, "loss": "CoSENTLoss", "max_steps": 2, "evaluations_per_trial": 1,
        "trials": LONG_TRIALS, "max_concurrent_trials": LONG_CONCURRENCY, "scheduler": "none", "searcher": "tpe",
        "startup_trials": 5, "seed": 7,
        "search": {"losses": ["CoSENTLoss"], "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
                   "per_device_train_batch_size": [8]},
    }
    cfg = write_config(root / "long.yaml", config)
    run = root / "run"
    samples: list[int] = []

    def finished(n: int):
        def check():
            samples.append(len(checkpoint_dirs(run)))
            return len(done(read_trials(run))) >= n
        return check

    obs: dict = {"run": run, "samples": samples}
    # 1. Ctrl-C after 8 finished trials: SIGINT to the process group, as a terminal sends it.
    first_started = time.time()
    first = start_sweep(root, "long-1", cfg, "--out", run)
    wait_until(finished(8), first, 600, "8 finished trials")
    os.killpg(first.sid, signal.SIGINT)
    interrupted_at = time.time()
    obs["ctrl_c"] = {
        "rc": first.wait(180), "seconds": time.time() - interrupted_at, "stderr": first.stderr(),
        "left": first.wait_session_gone(20), "summary": (run / "summary.json").exists(), "rows": read_trials(run),
        "wall": time.time() - first_started, "elapsed": json.loads((run / "sweep.json").read_text()).get("elapsed_seconds"),
    }
    first.kill_all()
    # 2. --resume; SIGKILL the driver as soon as 25 trials are done.
    second = start_sweep(root, "long-2", "--resume", "--out", run)
    wait_until(finished(25), second, 600, "25 finished trials")
    # a second --resume, or --force, while it runs: two sweeps would write one run dir
    obs["while_running"] = [run_stune("sweep", "--resume", "--out", run, timeout=120),
                            run_stune("sweep", cfg, "--out", run, "--force", "--dry-run", timeout=120)]
    os.kill(second.sid, signal.SIGKILL)
    second.wait(30)
    obs["killed"] = {"rows": read_trials(run)}
    obs["killed"]["left"] = second.kill_all()  # Ray processes the dead driver left behind, now killed
    obs["killed"]["left_after_cleanup"] = [_name(p) for p in second.processes()]
    # The killed workers' scratch folders, if Ray did not let them finish (it varies); and one of a
    # process that is surely dead, so that the check below cannot pass for want of a leftover.
    gone = subprocess.Popen(["true"])
    gone.wait()
    # Earlier than `true` started: whatever process holds that PID later is not the folder's owner.
    gone_started = psutil.Process().create_time() - 1
    (second.tmp / f"stune-trial-{gone.pid}.{gone_started:.2f}@{socket.gethostname()}-planted0").mkdir()
    # A kill that lands while Ray saves its searcher leaves the save's temporary file (seen in
    # a test run on 2026-12-07); the resume removes such leftovers (checked in the retention test).
    (run / ".0b1e2c3d-tmp-searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"cut")
    # 3. --resume again, to the end.
    third = start_sweep(root, "long-3", "--resume", "--out", run)
    while third.proc.poll() is None:
        samples.append(len(checkpoint_dirs(run)))
        time.sleep(0.2)
    obs["rc"] = third.wait(10)
    obs["third"] = third
    obs["rows"] = read_trials(run)
    obs["summary"] = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    obs["left_after_exit"] = third.wait_session_gone(20)
    obs["work_dirs_left"] = sorted(p.name for p in third.tmp.glob("stune-trial-*"))
    return obs


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_prints_how_to_resume_and_resumes(long_run):
    run, ctrl_c = long_run["run"], long_run["ctrl_c"]
    assert ctrl_c["rc"] == 130, ctrl_c["stderr"][-3000:]
    assert ctrl_c["seconds"] < 60, f"Ctrl-C took {ctrl_c['seconds']:.0f} s to stop the sweep"
    assert "Traceback" not in ctrl_c["stderr"], ctrl_c["stderr"][-3000:]
    # One line says what a Ctrl-C does, in stune's words (Ray's says the same and names Ray's API).
    assert ctrl_c["stderr"].count("Ctrl-C: stopping; saving the sweep's state") == 1, ctrl_c["stderr"][-3000:]
    assert "Stop signal received" not in ctrl_c["stderr"], ctrl_c["stderr"][-3000:]
    assert "Failed to fetch metrics" not in ctrl_c["stderr"], ctrl_c["stderr"][-3000:]
    last = [line for line in ctrl_c["stderr"].splitlines() if line.strip()][-1]
    assert last == f"interrupted; the run directory is kept, continue with: stune sweep --resume --out {run}", last
    assert ctrl_c["left"] == [], f"processes left after Ctrl-C: {ctrl_c['left']}"
    assert not ctrl_c["summary"], "an interrupted sweep writes no summary.json (it is not finished)"
    assert len(done(ctrl_c["rows"])) >= 8
    # ... and the run dir it left was resumed (the --resume runs after it finished the sweep).
    assert long_run["rc"] == 0, long_run["third"].tail()
    # The finished sweep's wall time counts the interrupted run (the killed run's time is lost with its driver).
    assert 0.5 * ctrl_c["wall"] < ctrl_c["elapsed"] <= ctrl_c["wall"], (ctrl_c["elapsed"], ctrl_c["wall"])
    assert long_run["summary"]["wall_seconds"] > ctrl_c["elapsed"]


@pytest.mark.slow
def test_driver_killed_resume_keeps_completed_trials_and_the_searchers_history(long_run):
    run, rows = long_run["run"], {r["trial_id"]: r for r in long_run["rows"]}
    assert long_run["rc"] == 0, long_run["third"].tail()
    assert long_run["killed"]["left_after_cleanup"] == []
    # Dead processes' scratch folders (a killed worker's checkpoints) were removed by the trials of
    # the next run on this host; the finished sweep leaves none of its own.
    assert long_run["work_dirs_left"] == [], long_run["work_dirs_left"]
    # Every trial finished before either interruption is kept, with its score.
    for before in done(long_run["ctrl_c"]["rows"]) + done(long_run["killed"]["rows"]):
        after = rows[before["trial_id"]]
        assert (after["status"], after["spearman_cosine"]) == (before["status"], before["spearman_cosine"]), (before, after)
    lost = [r for r in rows.values() if r["error"].startswith("lost:")]
    ray_trials = [r for r in rows.values() if r not in lost]
    assert len(ray_trials) == LONG_TRIALS, len(ray_trials)
    assert all(r["status"] == "completed" for r in ray_trials), [r for r in ray_trials if r["status"] != "completed"]
    summary = long_run["summary"]
    assert summary["counts"]["completed"] == LONG_TRIALS
    assert summary["best"]["spearman_cosine"] == pytest.approx(max(float(r["spearman_cosine"]) for r in ray_trials), abs=1e-6)
    # What stune export reads is the summary's winner, not a copy Ray kept from before a --resume.
    assert json.loads((run / "best.json").read_text()) == summary["best"]
    assert json.loads((run / "sweep.json").read_text())["baseline"] == summary["baseline"]
    # The searcher kept its history: one study holding every trial once; no proposal repeated
    # (a searcher rebuilt with the same seed would propose the first trials again).
    with contextlib.closing(sqlite3.connect(run / "study.db")) as db:
        (studies,) = db.execute("select count(*) from studies").fetchone()
        states = dict(db.execute("select trial_id, state from trials").fetchall())
        params = db.execute("select trial_id, param_name, param_value from trial_params").fetchall()
    assert studies == 1
    assert list(states.values()).count("COMPLETE") == LONG_TRIALS, states
    # Besides them, at most the trials proposed in the last second before the kill, which Ray's
    # saved state did not hold yet: written as running, they end as failed with the sweep.
    others = [s for s in states.values() if s != "COMPLETE"]
    assert set(others) <= {"FAIL"} and len(others) <= LONG_CONCURRENCY + 1, others
    per_trial: dict[int, tuple] = {}
    for trial_id, name, value in sorted(params):
        if states[trial_id] == "COMPLETE":
            per_trial[trial_id] = per_trial.get(trial_id, ()) + ((name, value),)
    assert len(set(per_trial.values())) == LONG_TRIALS, "a parameter set was proposed twice"
    assert len({(r["learning_rate"], r["scale"]) for r in ray_trials}) == LONG_TRIALS
    # Ray's trial numbers went on after each resume, not over from 1. (A trial that started after
    # Ray's last save and finished before the kill keeps its number, which Ray gives out again.)
    assert len({r["number"] for r in ray_trials}) >= LONG_TRIALS - LONG_CONCURRENCY, "Ray's trial numbers started over"


@pytest.mark.slow
def test_checkpoint_retention_holds_over_50_trials(long_run):
    run, samples = long_run["run"], long_run["samples"]
    assert len(samples) > 100
    # At most one checkpoint per running trial (Ray swaps in a newer one: two, for a moment).
    assert max(samples) <= 2 * LONG_CONCURRENCY, max(samples)
    assert checkpoint_dirs(run) == [], "finished trials keep no checkpoint: best/ holds the winner"
    weights = sorted(str(p.relative_to(run)) for p in run.rglob("*.safetensors"))
    assert weights == ["best/model.safetensors"], weights
    assert not list(run.rglob("optimizer.pt"))
    assert not list(run.glob(".*tmp*")) and not list(run.glob(".best.*"))


@pytest.mark.slow
def test_a_running_sweep_refuses_a_second_resume_or_force_and_its_crash_frees_the_run_dir(long_run):
    resume, force = long_run["while_running"]
    assert_user_error(resume, "a sweep is running there", "pid", "--resume")
    assert_user_error(force, "a sweep is running there", "pid", "--force")
    # the driver was SIGKILLed while it held the run dir: the third run resumed it all the same
    assert long_run["rc"] == 0, long_run["third"].tail()
    assert not (long_run["run"] / ".stune-running").exists()


@pytest.mark.slow
def test_sigterm_stops_a_sweep_as_ctrl_c_does(start_sweep, tiny_model, scored_data, tmp_path):
    """SIGTERM to the driver (Kubernetes stopping a pod, `kill PID`, a batch job's signal forwarded
    to it): Ray saves the sweep's state, exit 143, the --resume command is printed."""
    config = {"model": tiny_model, "data": scored_data, "max_steps": 10**6, "eval_steps": 200, "trials": 2,
              "scheduler": "none", "search": {"losses": ["CoSENTLoss"]}}
    run = tmp_path / "run"
    sweep = start_sweep(tmp_path, "term", write_config(tmp_path / "c.yaml", config), "--out", run)
    wait_until(lambda: checkpoint_dirs(run), sweep, 300, "a first checkpoint")
    os.kill(sweep.sid, signal.SIGTERM)
    assert sweep.wait(120) == 143, sweep.tail()
    assert sweep.stderr().count("SIGTERM: stopping; saving the sweep's state") == 1, sweep.tail()
    lines = [line for line in sweep.stderr().splitlines() if line.strip()]
    assert lines[-1] == f"interrupted; the run directory is kept, continue with: stune sweep --resume --out {run}", sweep.tail()
    assert sweep.wait_session_gone(20) == [], "Ray processes outlived the stopped sweep"
    assert "Traceback" not in sweep.stderr() and not (run / ".stune-running").exists(), sweep.tail()


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_leaves_nothing_running(start_sweep, tiny_model, scored_data, tmp_path):
    """Ctrl-C as soon as Ray's raylet exists (Ray still starting): exit 130, nothing to resume is
    said so, and no Ray process of the sweep outlives it (Ray's agents used to)."""
    config = {"model": tiny_model, "data": scored_data, "max_steps": 2, "trials": 2, "scheduler": "none"}
    run = tmp_path / "run"
    sweep = start_sweep(tmp_path, "early", write_config(tmp_path / "c.yaml", config), "--out", run)
    wait_until(lambda: any(_name(p) == "raylet" for p in sweep.processes()), sweep, 300, "Ray's raylet")
    os.killpg(sweep.sid, signal.SIGINT)
    assert sweep.wait(120) == 130, sweep.tail()
    assert sweep.wait_session_gone(15) == [], "Ray processes outlived the interrupted sweep"
    lines = [line for line in sweep.stderr().splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted before the first trial started; nothing to resume"), sweep.tail()
    assert "Traceback" not in sweep.stderr(), sweep.tail()


@pytest.mark.slow
def test_failed_export_leaves_the_existing_folder_as_it_was(long_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(long_run["run"], copy)
    sweep = json.loads((copy / "sweep.json").read_text())
    sweep["config"]["data"]["eval"] = str(tmp_path / "moved-away.csv")  # the eval data moved since the sweep
    (copy / "sweep.json").write_text(json.dumps(sweep))
    mine = tmp_path / "exported"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    proc = run_stune("export", copy, "--out", mine, "--force", timeout=300)
    assert proc.returncode == 2 and "moved-away.csv" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my own file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exported")] == [], "no partial export left"


@pytest.mark.slow
def test_resume_skips_a_ray_state_file_cut_short_and_refuses_when_none_can_be_read(long_run, tmp_path):
    """Ray resumes from the newest experiment_state-*.json; when it cannot read that file it only
    logs "Failed to restore the run state" and starts the sweep over, in the same run dir (a CI-like
    run, 2026-12-07, where the driver was killed while copying the file in: 38 trials of 50 ran)."""
    copy = tmp_path / "run"
    shutil.copytree(long_run["run"], copy)
    rows_before = read_trials(copy)
    newest = max(copy.glob("experiment_state-*.json"))  # the last save, e.g. experiment_state-2026-12-07_21-38-05.json
    saved_at = datetime.datetime.strptime(newest.stem.removeprefix("experiment_state-"), "%Y-%m-%d_%H-%M-%S")
    # a save of the same state one second earlier, so that it is the newest left once the last is set aside
    older = f"experiment_state-{saved_at - datetime.timedelta(seconds=1):%Y-%m-%d_%H-%M-%S}.json"
    (copy / older).write_bytes(newest.read_bytes())
    newest.write_bytes(newest.read_bytes()[:100])  # cut short
    proc = run_stune("sweep", "--resume", "--out", copy, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{newest.name} in the run dir cannot be read" in proc.stderr, proc.stderr[-3000:]
    assert "Failed to restore" not in proc.stderr, proc.stderr[-3000:]
    assert read_trials(copy) == rows_before  # the finished sweep stays finished: nothing ran again
    assert (copy / f".unreadable-{newest.name}").exists()

    for state in copy.glob("experiment_state-*.json"):
        state.write_bytes(b"")
    proc = run_stune("sweep", "--resume", "--out", copy, timeout=300)
    assert_user_error(proc, "cannot be read", "--force")
    assert read_trials(copy) == rows_before


def test_a_write_cut_by_a_kill_leaves_the_run_dirs_file_whole(tmp_path):
    """Ray copies its state files into a local run dir through stune's file system; a process
    killed in the middle of a copy leaves the file it was replacing as it was, and a hidden
    partial file that the next sweep in that run dir removes."""
    run = tmp_path / "run"
    (run / "trial_1").mkdir(parents=True)
    script = textwrap.dedent(f"""
        import os, signal
        from tune.rundir import linking_local_fs
        fs = linking_local_fs()
        for name in ("experiment_state-1.json", "trial_1/result.json"):
            with fs.open_output_stream("{run}/" + name) as out:
                out.write(b'{{"saved": "whole"}}')
        out = fs.open_output_stream("{run}/experiment_state-1.json")
        out.write(b'{{"saved": "ha')
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((run / "experiment_state-1.json").read_text()) == {"saved": "whole"}
    assert json.loads((run / "trial_1" / "result.json").read_text()) == {"saved": "whole"}
    partial = [p.name for p in run.iterdir() if p.name.startswith(".experiment_state-1.json")]
    assert len(partial) == 1, list(run.iterdir())

    from tune.engine import _remove_partial_saves

    (run / "trial_1" / ".result.json.stune-partial-0123abcd").write_bytes(b"{")
    _remove_partial_saves(str(run))
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["experiment_state-1.json", "trial_1", "trial_1/result.json"]


# --------------------------------------------------------------------------- quick ones

FAILED_WRITES = r"""
import json, os, resource, signal, sys
from pathlib import Path
from types import SimpleNamespace
import pyarrow.fs as pafs
from tune.recorder import SweepRecorder
from tune.rundir import RunDir
from tune.trainable import EVAL_NOTE

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
root, limit = Path(sys.argv[1]), int(sys.argv[2])
run = RunDir.open(str(root / "run"))
recorder = SweepRecorder(run, 2)

def checkpoint(name, size, score):  # a trial checkpoint as the trainable leaves it and Ray persists it
    folder = root / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(size))
    (folder / "config.json").write_text("{}")
    (folder / EVAL_NOTE).write_text(json.dumps({"spearman_cosine": score, "step": 2}))
    # Seen through another file-system object, as a checkpoint on other storage is: best/ is then
    # a byte copy (which can fail half-way), not hard links to the checkpoint's files.
    return SimpleNamespace(filesystem=pafs.SubTreeFileSystem("/", pafs.LocalFileSystem()), path=str(folder).lstrip("/"))

def improve(trial_id, ckpt):
    trial = SimpleNamespace(trial_id=trial_id, config={"loss": "CoSENTLoss"}, last_result={"training_iteration": 1})
    score = json.loads(Path("/", ckpt.path, EVAL_NOTE).read_text())["spearman_cosine"]
    recorder.on_trial_result(0, [], trial, {"spearman_cosine": score, "training_iteration": 1, "step": 2})
    recorder.on_checkpoint(0, [], trial, ckpt)

first, second = checkpoint("c1", limit // 2, 0.5), checkpoint("c2", 2 * limit, 0.9)
improve("t1", first)
run.write_json("summary.json", {"best": recorder.best["trial_id"]})
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
improve("t2", second)  # the copy to best/ fails half-way (disk full, quota...)
try:
    run.write_json("summary.json", {"best": "x" * (2 * limit)})
    summary_error = None
except OSError as exc:
    summary_error = str(exc)
print(json.dumps({"best": recorder.best["trial_id"], "summary_error": summary_error}))
"""


def test_failed_writes_keep_the_best_checkpoint_and_summary(tmp_path):
    """A copy into best/ and a summary.json write that fail half-way (a real EFBIG: the file-size
    limit is set below the checkpoint's size) leave the previous best and summary as they were."""
    limit = 256 * 1024
    proc = subprocess.run([sys.executable, "-c", FAILED_WRITES, str(tmp_path), str(limit)], capture_output=True, text=True,
                          cwd=ROOT, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    run = tmp_path / "run"
    assert out["best"] == "t1", "the recorder keeps the last best it could copy"
    assert out["summary_error"], "the oversized summary write did fail"
    assert (run / "best" / "model.safetensors").read_bytes() == (tmp_path / "c1" / "model.safetensors").read_bytes()
    assert json.loads((run / "best.json").read_text())["trial_id"] == "t1"
    assert json.loads((run / "summary.json").read_text()) == {"best": "t1"}
    assert sorted(p.name for p in run.iterdir()) == ["best", "best.json", "summary.json"], "no temp file or folder left"
    assert "could not copy" in proc.stderr and "previous best is kept" in proc.stderr


def test_best_checkpoint_takes_no_second_copy_on_local_disk(tmp_path):
    """best/ in a local run dir hard-links the files of the trial checkpoint it came from: the
    best model costs no disk of its own while its trial's checkpoint is kept, and stays whole
    when Ray deletes that checkpoint."""
    import shutil
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from tune.recorder import SweepRecorder
    from tune.rundir import RunDir
    from tune.trainable import EVAL_NOTE

    folder = tmp_path / "run" / "trial_1" / "checkpoint_000000"
    folder.mkdir(parents=True)
    weights = os.urandom(4096)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / EVAL_NOTE).write_text(json.dumps({"spearman_cosine": 0.7, "step": 2}))
    recorder = SweepRecorder(RunDir.open(str(tmp_path / "run")), 1)
    trial = SimpleNamespace(trial_id="t1", config={"loss": "CoSENTLoss"}, last_result={"training_iteration": 1})
    recorder.on_trial_result(0, [], trial, {"spearman_cosine": 0.7, "training_iteration": 1, "step": 2})
    recorder.on_checkpoint(0, [], trial, SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(folder)))
    best = tmp_path / "run" / "best" / "model.safetensors"
    assert best.stat().st_ino == (folder / "model.safetensors").stat().st_ino
    shutil.rmtree(folder)  # Ray's checkpoint rotation
    assert best.read_bytes() == weights


def test_a_tie_on_spearman_goes_to_the_checkpoint_with_the_higher_pearson(tmp_path):
    """On a small eval split two trials that order the pairs alike tie exactly on spearman_cosine;
    best/ then keeps the one whose similarities follow the gold scores more closely (pearson on
    the same pairs), and an exact tie on both keeps the earlier checkpoint."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from tune.recorder import SweepRecorder
    from tune.rundir import RunDir
    from tune.trainable import EVAL_NOTE

    recorder = SweepRecorder(RunDir.open(str(tmp_path / "run")), 4)

    def report(trial_id: str, spearman: float, pearson: float) -> bytes:
        folder = tmp_path / "run" / f"trial_{trial_id}" / "checkpoint_000000"
        folder.mkdir(parents=True)
        weights = os.urandom(1024)
        (folder / "model.safetensors").write_bytes(weights)
        (folder / EVAL_NOTE).write_text(json.dumps({"spearman_cosine": spearman, "pearson_cosine": pearson, "step": 3}))
        trial = SimpleNamespace(trial_id=trial_id, config={"loss": "CoSENTLoss"}, last_result={"training_iteration": 1})
        recorder.on_trial_result(0, [], trial, {"spearman_cosine": spearman, "training_iteration": 1, "step": 3})
        recorder.on_checkpoint(0, [], trial, SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(folder)))
        return weights

    first = report("a", 0.798, 0.80)
    second = report("b", 0.798, 0.84)  # same ranks, closer to the gold scores
    report("c", 0.798, 0.82)
    report("d", 0.798, 0.84)  # a full tie: the earlier checkpoint stays
    best = tmp_path / "run" / "best" / "model.safetensors"
    assert recorder.best["trial_id"] == "b" and best.read_bytes() == second != first
    report("e", 0.799, 0.10)  # spearman decides first
    assert recorder.best["trial_id"] == "e"
    assert json.loads((tmp_path / "run" / "best.json").read_text())["trial_id"] == "e"


def test_a_reported_checkpoint_is_linked_into_a_local_run_dir_not_copied(tmp_path):
    """Ray persists a reported checkpoint with pyarrow's copy_files, from the file system the trial
    reports it with to the run's storage file system. For a local run dir on the trial's disk
    that is a hard link: the trial's new checkpoint takes its size on disk once, not twice, while
    Ray holds both. Across disks it is a copy, byte for byte."""
    import pyarrow.fs as pafs

    from tune.rundir import RunDir
    from tune.trainable import checkpoint_to_report

    run = RunDir.open(str(tmp_path / "run"))
    storage = run.ray_storage_filesystem
    weights = os.urandom(8192)

    def persist(local, dest):
        (local / "sub").mkdir(parents=True)
        (local / "model.safetensors").write_bytes(weights)
        (local / "sub" / "config.json").write_text("{}")
        reported = checkpoint_to_report(str(local))
        storage.create_dir(str(dest))
        # As ray.train._internal.storage.StorageContext.persist_current_checkpoint does:
        pafs.copy_files(str(local), str(dest), source_filesystem=reported.filesystem,
                        destination_filesystem=storage, chunk_size=64 * 1024 * 1024)

    local, dest = tmp_path / "stune-trial-1" / "checkpoint-2", tmp_path / "run" / "trial_1" / "checkpoint_000000"
    persist(local, dest)
    for name in ("model.safetensors", "sub/config.json"):
        assert (dest / name).stat().st_ino == (local / name).stat().st_ino, name
    shutil.rmtree(local)  # what the trial does once report() returns
    assert (dest / "model.safetensors").read_bytes() == weights

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system here to check the copy across disks")
    other = Path(tempfile.mkdtemp(dir=shm, prefix="stune-test-"))
    try:
        dest2 = tmp_path / "run" / "trial_2" / "checkpoint_000000"
        persist(other / "checkpoint-2", dest2)
        assert (dest2 / "model.safetensors").read_bytes() == weights
        assert (dest2 / "model.safetensors").stat().st_dev != (other / "checkpoint-2" / "model.safetensors").stat().st_dev
    finally:
        shutil.rmtree(other)


def test_a_trial_lost_to_a_driver_kill_leaves_no_checkpoint(tmp_path):
    """A trial started in the last second before the driver was killed is missing from Ray's saved
    state, so Ray never ends it after --resume; its checkpoint must not stay in the run dir for ever
    (seen in the 50-trial kill-and-resume run)."""
    from types import SimpleNamespace

    from tune.recorder import SweepRecorder
    from tune.rundir import RunDir

    run = tmp_path / "run"
    for trial_id in ("lost1", "kept1"):
        (run / f"trial_{trial_id}" / "checkpoint_000000").mkdir(parents=True)
        (run / f"trial_{trial_id}" / "checkpoint_000000" / "model.safetensors").write_bytes(b"w")
    (run / "trials.csv").write_text("trial_id,number,status\nlost1,26,running\nkept1,25,running\n")
    recorder = SweepRecorder(RunDir.open(str(run)), 2)
    recorder.setup()
    known = SimpleNamespace(trial_id="kept1", config={"loss": "CoSENTLoss"}, experiment_tag="25_x")
    recorder.on_experiment_end([known])
    rows = {r["trial_id"]: r for r in read_trials(run)}
    assert rows["lost1"]["status"] == "errored" and rows["lost1"]["error"].startswith("lost:"), rows
    assert not (run / "trial_lost1" / "checkpoint_000000").exists()
    assert (run / "trial_kept1" / "checkpoint_000000").exists()  # Ray still ends this one


def test_a_trial_whose_end_the_killed_driver_never_wrote_keeps_its_last_result(tmp_path):
    """The driver was killed after Ray saved a trial's last result and checkpoint but before
    trials.csv had them (it still said "running"). On --resume Ray restores the trial from that
    checkpoint, at its last step, and the trial ends without reporting again: its row is
    completed with the score Ray saved, not "stopped early" with none (seen once in CI, 2026-12-07)."""
    from types import SimpleNamespace

    from tune.recorder import SweepRecorder
    from tune.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.csv").write_text("trial_id,number,status,loss\nt35,35,running,CoSENTLoss\n")
    recorder = SweepRecorder(RunDir.open(str(run)), 50)
    recorder.setup()
    # As Ray's Trial.on_restore sets it: the metrics reported with the restored checkpoint.
    restored = SimpleNamespace(trial_id="t35", config={"loss": "CoSENTLoss"}, experiment_tag="35_x", checkpoint=None,
                               last_result={"spearman_cosine": 0.4321, "step": 2, "total_steps": 2, "node": "10.0.0.2"})
    recorder.on_trial_start(0, [], restored)
    recorder.on_trial_complete(0, [], restored)
    row = {r["trial_id"]: r for r in read_trials(run)}["t35"]
    assert (row["status"], row["spearman_cosine"], row["steps"], row["total_steps"]) == ("completed", "0.4321", "2", "2"), row

    # A trial that reported fewer steps than planned before it ended is still "stopped early".
    cut = SimpleNamespace(trial_id="t36", config={"loss": "CoSENTLoss"}, experiment_tag="36_x", checkpoint=None,
                          last_result={"spearman_cosine": 0.3, "step": 1, "total_steps": 2})
    recorder.on_trial_start(0, [], cut)
    recorder.on_trial_result(0, [], cut, cut.last_result)
    recorder.on_trial_complete(0, [], cut)
    assert {r["trial_id"]: r for r in read_trials(run)}["t36"]["status"] == "stopped_early"


def test_a_new_trial_removes_the_scratch_folders_of_ended_processes_only(tmp_path, monkeypatch):
    """A worker killed mid-trial leaves its scratch folder (checkpoints) in $TMPDIR; the next trial
    on the host removes it. A PID alone does not say its owner ended: PIDs wrap (at 32768 here) and
    a new process may hold it, so the folder name carries the owner's start time too."""
    from tune.trainable import trial_work_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host, me = socket.gethostname(), psutil.Process()
    gone = subprocess.Popen(["true"])
    gone.wait()
    folders = {
        "mine": f"stune-trial-{me.pid}.{me.create_time():.2f}@{host}-a",  # a live trial's: kept
        "pid_reused": f"stune-trial-{me.pid}.{me.create_time() - 3600:.2f}@{host}-b",
        "ended": f"stune-trial-{gone.pid}.{me.create_time():.2f}@{host}-c",
        "ended_old_name": f"stune-trial-{gone.pid}@{host}-d",
        "live_old_name": f"stune-trial-{me.pid}@{host}-e",  # kept: nothing says the owner changed
        "other_host": f"stune-trial-{gone.pid}.1.00@not-{host}-f",  # that host's trials decide
    }
    for name in folders.values():
        (tmp_path / name / "checkpoint-2").mkdir(parents=True)
    new = trial_work_dir()
    left = {key for key, name in folders.items() if (tmp_path / name).exists()}
    assert left == {"mine", "live_old_name", "other_host"}, left
    assert new.parent == tmp_path and new.name.startswith(f"stune-trial-{me.pid}.{me.create_time():.2f}@{host}-")
    assert trial_work_dir() != new and new.exists()  # the next trial of this process keeps the running one's


def test_run_dir_writes_cannot_escape_it(tmp_path):
    from tune.rundir import RunDir

    run = RunDir.open(str(tmp_path / "runs" / "run"))
    for name in ("../escape.json", "/tmp/escape.json", "a/../../escape.json", "../run-2/x.json"):
        with pytest.raises(ValueError, match="outside the run directory"):
            run.write_json(name, {"x": 1})
    with pytest.raises(ValueError, match="outside the run directory"):
        run.replace_dir_from("../best", None, str(tmp_path))
    run.write_json("ok.json", {"x": 1})
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == ["runs/run/ok.json"]


def test_yaml_is_read_with_safe_loading_only(tmp_path):
    import re

    from trainers.config import read_yaml
    from trainers.errors import ConfigError

    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all)\(|Loader\s*=|yaml\.(Unsafe|Full)?Loader\b")
    sources = [p for pkg in ("tune", "trainers", "cluster") for p in (ROOT / pkg).rglob("*.py")]
    offending = [f"{p.relative_to(ROOT)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not offending, offending
    assert any("yaml.safe_load" in p.read_text() for p in sources)
    marker = tmp_path / "PWNED"
    config = tmp_path / "c.yaml"
    config.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(config)
    assert not marker.exists()


def test_trust_remote_code_only_when_the_config_says_so(tiny_model, tmp_path, no_copied_model_code):
    """A model folder shipping its own code: loaded without running it unless the config sets
    ``trust_remote_code: true``."""
    from trainers.config import TrainConfig, parse_config
    from trainers.errors import ModelError
    from trainers.model import load_model

    assert TrainConfig().trust_remote_code is False
    model = tmp_path / "custom-model"
    shutil.copytree(tiny_model, model)
    marker = tmp_path / "remote-code-ran"
    (model / "stune_custom_code.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from transformers import BertConfig, BertModel
        class CustomConfig(BertConfig):
            pass
        class CustomModel(BertModel):
            config_class = CustomConfig
    """))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "stune_custom_code.CustomConfig", "AutoModel": "stune_custom_code.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))

    cfg = parse_config(TrainConfig, {"model": str(model)})
    with contextlib.suppress(ModelError):
        load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    assert not marker.exists(), "the model's own code ran without trust_remote_code"
    cfg = parse_config(TrainConfig, {"model": str(model), "trust_remote_code": True})
    with contextlib.suppress(ModelError):
        load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    assert marker.exists(), "with trust_remote_code: true the model's code runs (the test's custom code is real)"
    # Every model load in stune passes the config's value (or nothing: False); none hard-codes True.
    sources = [p for pkg in ("tune", "trainers") for p in (ROOT / pkg).rglob("*.py")]
    assert not [p for p in sources if "trust_remote_code=True" in p.read_text()]


@pytest.fixture
def no_copied_model_code():
    """transformers copies a trusted model's code under HF_MODULES_CACHE: remove the test's copy."""
    yield
    from transformers.utils import HF_MODULES_CACHE

    modules = Path(HF_MODULES_CACHE) / "transformers_modules"
    for code in list(modules.rglob("stune_custom_code.py")):
        shutil.rmtree(modules / code.relative_to(modules).parts[0], ignore_errors=True)


def test_a_resumed_searcher_skips_a_trial_it_never_saw():
    """After a SIGKILLed driver, Ray's saved experiment can hold a trial started just after the
    searcher's state was saved: its results used to raise KeyError in Ray's OptunaSearch and end
    every --resume (seen in the 50-trial run above). stune's searcher skips them; the rest as usual."""
    from tune.faults import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(lambda trial: {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True)},
                                     metric="score", mode="max")
    known = searcher.suggest("known")
    assert "lr" in known
    searcher.on_trial_result("unseen", {"score": 0.5, "training_iteration": 1})  # Ray's: KeyError
    searcher.on_trial_complete("unseen", {"score": 0.5, "training_iteration": 1})
    searcher.on_trial_result("known", {"score": 0.4, "training_iteration": 1})
    searcher.on_trial_complete("known", {"score": 0.4, "training_iteration": 1})
    trials = searcher._ot_study.get_trials()
    assert len(trials) == 1 and trials[0].value == 0.4


def _learning_rate_space(trial):  # module level: Ray pickles the searcher with its space
    return {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True)}


def _mirrored_searcher(tmp_path):
    """The sweep's searcher over a small space, seeded, with its study copied to tmp_path/study.db."""
    import optuna

    from tune.faults import ResumableOptunaSearch
    from tune.study import StudyMirror

    made = ResumableOptunaSearch(_learning_rate_space, metric="score", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    made.mirror = StudyMirror(str(tmp_path / "study.db"), "run")
    return made


def test_a_resumed_searcher_takes_back_trials_that_finished_after_its_last_save(tmp_path):
    """The searcher's study lives in memory (study.db is its copy). After a killed driver, Ray
    restores the searcher as it was at its last save: trials that finished after that are in
    study.db only. The resumed searcher learns them back, and does not propose again what its
    saved random state proposed after the save (a configuration run twice)."""
    import optuna

    def finish(searcher, trial_id, score):
        searcher.on_trial_result(trial_id, {"score": score, "training_iteration": 1})
        searcher.on_trial_complete(trial_id, {"score": score, "training_iteration": 1})

    before = _mirrored_searcher(tmp_path)
    before.suggest("a")
    finish(before, "a", 0.4)
    before.save(str(tmp_path / "searcher.pkl"))
    after_save = before.suggest("b")
    finish(before, "b", 0.6)  # then the driver is killed

    resumed = _mirrored_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert sorted(t.value for t in resumed._ot_study.get_trials()) == [0.4, 0.6]
    assert resumed.suggest("c") != after_save
    finish(resumed, "b", 0.6)  # Ray runs b again from its own state: nothing is added twice
    finish(resumed, "c", 0.5)
    recorded = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert sorted((t.user_attrs["trial_id"], t.value) for t in recorded) == [("a", 0.4), ("b", 0.6), ("c", 0.5)]
    assert sorted(t.value for t in resumed._ot_study.get_trials()) == [0.4, 0.5, 0.6]


@pytest.mark.parametrize("restored_count", [1, 2, 3])
def test_a_resumed_sweep_runs_as_many_trials_as_asked_for(restored_count, tmp_path):
    """Ray restores its count of the trials it created from its last save, which need not match
    the trials that exist: one that started after that save and finished before the driver was
    killed is kept from trials.csv but was not counted (a 50-trial sweep ran 51, CI 2026-12-07),
    and one Ray's trial list lacks may have been. The count becomes the trials that exist: those
    Ray restored and those kept, not those lost with the driver, so Ray creates just the rest."""
    import csv

    from ray.tune.experiment import Trial
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from tune.faults import CountTrialsThatExist, ResumableOptunaSearch
    from tune.recorder import SweepRecorder
    from tune.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "trials.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["trial_id", "status", "error"])
        writer.writeheader()
        writer.writerows([{"trial_id": "a", "status": "completed", "error": ""},  # in Ray's saved state
                          {"trial_id": "b", "status": "completed", "error": ""},  # finished after it
                          {"trial_id": "c", "status": "running", "error": ""},  # lost with the driver
                          {"trial_id": "d", "status": "errored", "error": "lost: the sweep was killed before ..."}])
    recorder = SweepRecorder(RunDir.open(str(run)), 4)
    recorder.setup()
    searcher = ResumableOptunaSearch(_learning_rate_space, metric="score", mode="max")
    generator = SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=2))  # as the engine makes it
    generator.set_state({"counter": restored_count, "total_samples": 4, "finished": False, "experiment": None})
    counting = CountTrialsThatExist(generator, recorder.kept_trial_ids)
    counting.on_step_begin(0, [Trial("trainable", stub=True, trial_id="a")])
    assert generator.get_state()["counter"] == 2 and not generator.is_finished()
    generator.set_state({**generator.get_state(), "counter": 3})  # Ray made a trial; the count is not set again
    counting.on_step_begin(1, [Trial("trainable", stub=True, trial_id="a")])
    assert generator.get_state()["counter"] == 3


def test_study_db_shows_each_trial_while_it_runs(tmp_path):
    """optuna-dashboard reads study.db: a trial is there from its proposal, running, with each
    score as it comes, and ends with the searcher's verdict. A trial that the searcher lost in an
    interruption but Ray ran on ends with its last score; one never resumed ends as failed."""
    import optuna

    from tune.study import StudyMirror

    def recorded():
        trials = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
        return {t.user_attrs["trial_id"]: (t.state.name, t.value, t.intermediate_values) for t in trials}

    live = _mirrored_searcher(tmp_path)
    config = live.suggest("a")
    assert recorded() == {"a": ("RUNNING", None, {})}
    [stored] = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert stored.params == config
    live.on_trial_result("a", {"score": 0.3, "training_iteration": 1})
    live.on_trial_result("a", {"score": 0.5, "training_iteration": 2})
    assert recorded()["a"] == ("RUNNING", None, {1: 0.3, 2: 0.5})
    live.on_trial_complete("a", {"score": 0.5, "training_iteration": 2})
    assert recorded()["a"] == ("COMPLETE", 0.5, {1: 0.3, 2: 0.5})
    live.save(str(tmp_path / "searcher.pkl"))
    live.suggest("b")
    live.suggest("c")
    live.on_trial_result("b", {"score": 0.2, "training_iteration": 1})  # then the driver is killed

    resumed = _mirrored_searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.pkl"))  # b and c were proposed after its save
    resumed.on_trial_result("b", {"score": 0.4, "training_iteration": 2})  # Ray resumed b, not c
    resumed.on_trial_complete("b", {"score": 0.4, "training_iteration": 2})
    assert recorded()["b"] == ("COMPLETE", 0.4, {1: 0.2, 2: 0.4})
    assert recorded()["c"][0] == "RUNNING"
    assert StudyMirror(str(tmp_path / "study.db"), "run").end_running() == 1  # the sweep ends
    assert {k: v[0] for k, v in recorded().items()} == {"a": "COMPLETE", "b": "COMPLETE", "c": "FAIL"}
