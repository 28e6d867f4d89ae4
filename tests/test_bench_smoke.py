"""Smoke runs of the benchmarks in bench/ (``--quick``: tiny model, 2-3 trials), one test each, so
that they cannot rot. The targets themselves are checked by the benchmarks, not here: a quick run
on a tiny random model says nothing about them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(name: str, tmp_path: Path, *extra: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(out), "--work", str(tmp_path / "work"), *extra],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = out / f"{name}-quick.json"
    return proc, json.loads(result.read_text()) if result.exists() else None


def check_common(result: dict, name: str) -> None:
    assert result["benchmark"] == name and result["mode"] == "quick"
    assert result["command"].startswith(f"python bench/{name}.py --quick")
    assert len(result["loadavg"]["start"]) == 3 and result["machine"]["cores"] >= 1


def test_overhead(tmp_path):
    proc, result = run_bench("overhead", tmp_path)
    check_common(result, "overhead")
    assert result["ratio"] > 0 and result["first_step_b_s"] > 0
    assert result["same_scores"], result["pairs"][0]["scores"]  # both sides did the same training
    assert "(b)/(a)" in proc.stdout and "Targets" in proc.stdout


def test_search_efficiency(tmp_path):
    proc, result = run_bench("search_efficiency", tmp_path)
    check_common(result, "search_efficiency")
    budget = result["setup"]["budget_trial_steps"]
    for run in result["runs"]:
        assert run["curve"] and run["curve"][0]["trial_steps"] > 0
        assert min(c["trial_steps"] for c in run["curve"]) <= budget
    assert result["strategies"]["random"]["trials_run_mean"] == result["setup"]["random_trials"]
    assert (tmp_path / "results" / "search_efficiency-quick.png").stat().st_size > 0

    # --random-from: a changed TPE + ASHA setting is compared with the random runs of the first result
    first = tmp_path / "first.json"
    (tmp_path / "results" / "search_efficiency-quick.json").rename(first)
    proc, again = run_bench("search_efficiency", tmp_path, "--random-from", str(first), "--reduction-factor", "3")
    assert [r["strategy"] for r in again["runs"]] == ["random", "tpe+asha"]
    assert again["runs"][0] == [r for r in result["runs"] if r["strategy"] == "random"][0]
    assert again["setup"]["overrides"]["asha"] == {"reduction_factor": 3.0}
    assert again["strategies"]["tpe+asha"]["fraction_to_random_best_mean"] is not None
    # ... and refuses random runs of another setup, or without the seeds asked for: one line naming
    # the option and what differs, a non-zero exit, no result written.
    (tmp_path / "results" / "search_efficiency-quick.json").unlink()
    for extra, message in ((["--steps", "5"], "was run with budget_trial_steps 8, this run with 10"),
                           (["--seeds", "5"], "has no random-search run for seed(s) [5]")):
        proc = subprocess.run(
            [sys.executable, str(BENCH / "search_efficiency.py"), "--quick", "--out", str(tmp_path / "results"),
             "--work", str(tmp_path / "work"), "--random-from", str(first), *extra],
            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and last.startswith(f"--random-from: {first}") and message in last, (proc.returncode, last)
        assert not (tmp_path / "results" / "search_efficiency-quick.json").exists()
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "overhead", "setup": {}}))  # another benchmark's result
    proc = subprocess.run(
        [sys.executable, str(BENCH / "search_efficiency.py"), "--quick", "--out", str(tmp_path / "results"),
         "--work", str(tmp_path / "work"), "--random-from", str(tmp_path / "other.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"--random-from: {tmp_path / 'other.json'} is not a result of this benchmark (no search_efficiency result); "
        "give a search_efficiency*.json it wrote"], proc.stderr[-2000:]


def test_quality(tmp_path):
    proc, result = run_bench("quality", tmp_path)
    check_common(result, "quality")
    (seed,) = result["seeds"]
    assert seed["seed"] == "004" and seed["sizes"]["test"] > 0
    for key in ("base_test", "recipe_test", "sweep_test"):
        assert -1 <= seed[key] <= 1


def test_resources(tmp_path):
    # with gradient caching, as the published run that meets the memory target (BENCHMARKS.md §4)
    proc, result = run_bench("resources", tmp_path, "--gradient-cache", "4")
    check_common(result, "resources")
    assert result["setup"]["gradient_cache_mini_batch_size"] == 4 and "gradient cache of 4 texts" in proc.stdout
    assert result["counts"]["errored"] == 0
    assert result["trial_workers"] and result["peak_worker_rss_bytes"] > 0
    assert result["peak_checkpoint_disk_bytes"] > 0
    after = result["checkpoint_disk_after_parts"]  # only best/ is left once the sweep is over
    assert after["run_dir_checkpoints"] == 0 and after["trial_local"] == 0 and after["best"] > 0
    # which trial each worker ran at its peak, and the mix of trials: the peak depends on them
    assert {p["pid"] for p in result["trial_at_peaks"]} == {w["pid"] for w in result["trial_workers"]}
    ran = [p for p in result["trial_at_peaks"] if p["trial_id"]]  # (Ray may start a worker that gets no trial)
    assert ran and all(p["loss"] and p["batch"] for p in ran), result["trial_at_peaks"]
    assert sum(m["trials"] for m in result["trial_mix"]) == sum(result["counts"].values())


def test_gradient_cache(tmp_path):
    proc, result = run_bench("gradient_cache", tmp_path)
    check_common(result, "gradient_cache")
    runs = result["runs"]
    assert {(r["loss"], r["gradient_cache_mini_batch_size"]) for r in runs} == {
        (loss, size) for loss in ("TripletLoss", "CoSENTLoss") for size in (None, 4)}
    assert all(r["s_per_step"] > 0 and r["peak_rss_mib"] > 0 and -1 <= r["eval_spearman_cosine"] <= 1 for r in runs)
    assert "vs unset" in proc.stdout


def test_gpu_packing(tmp_path):
    proc, result = run_bench("gpu_packing", tmp_path)
    if result is None:  # no GPU here: says so and measures nothing
        assert "no GPU present" in proc.stdout
    else:
        check_common(result, "gpu_packing")
        assert all(r["trial_steps_per_s"] > 0 for r in result["results"])


def test_gpu_packing_cpu_dry_run_measures_every_fraction_and_plots(tmp_path):
    """The measurement path of the GPU benchmark, run on the CPU: every fraction's sweep ran and
    was measured (this is what a GPU session runs blind, with minutes of GPU time at stake)."""
    proc, _ = run_bench("gpu_packing", tmp_path, "--cpu-dry-run")
    result = json.loads((tmp_path / "results" / "gpu_packing_cpu_dry_run-quick.json").read_text())
    assert result["setup"]["dry_run_on_cpu"] and not result["failures"]
    assert [r["gpus_per_trial"] for r in result["results"]] == [1.0, 0.5]
    assert [r["concurrent_trials"] for r in result["results"]] == [1, 2]
    for r in result["results"]:
        assert r["trial_steps"] == r["trials"] * result["setup"]["steps_per_trial"]
        assert r["trial_steps_per_s"] > 0 and r["median_trial_steps_per_s"] > 0
    assert Path(result["plot"]).stat().st_size > 10_000
    assert "Throughput by gpus_per_trial" in proc.stdout
