"""Resource bounds of a sweep: peak memory of each trial worker process and peak checkpoint disk.

    python bench/resources.py            # published figures: 30-trial default sweep, bundled MiniLM
    python bench/resources.py --quick    # smoke run: tiny model, 3 trials

The sweep runs in this process (``tune.engine.run_sweep``, stune's defaults: TPE + ASHA, every
loss, 2 concurrent trials); a sampler thread reads, every 0.25 s,
- the resident memory (RSS, and USS: memory no other process shares) of every process under this
  one; trial workers are Ray's actor processes that ran ``run_trial`` (title ``ray::ImplicitFunc``);
- checkpoint bytes on disk: every ``checkpoint_*`` folder and ``best/`` in the run dir, plus the
  trials' local working checkpoints (their temp folders, put under this benchmark's own TMPDIR so
  that nothing else on the machine is counted).

Targets: peak RSS per trial worker <= 1.5 GB (MiniLM); peak checkpoint disk <=
(concurrent trials + 1) x model size (the weights file).
"""

from __future__ import annotations

import collections
import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_RSS = 1.5e9
TRIAL_TITLES = ("ImplicitFunc", "run_trial")
MB = 1e6


class Sampler(threading.Thread):
    def __init__(self, run_dir: Path, tmp: Path, every: float = 0.25):
        super().__init__(daemon=True, name="resource-sampler")
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.run_dir, self.tmp, self.every = run_dir, tmp, every
        self.procs: dict[int, dict] = {}
        self.driver_rss = 0
        self.disk_peak = 0
        self.disk_peak_parts: dict[str, int] = {}
        self.disk_series: list[tuple[float, int]] = []
        self.rss_series: dict[int, list[tuple[float, int]]] = {}  # trial workers: (seconds, RSS)
        self.largest_checkpoint = 0  # one trial checkpoint in the run dir (weights + optimizer state)
        self._halt = threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every)
        self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def sample(self) -> None:
        try:
            self.driver_rss = max(self.driver_rss, self.me.memory_info().rss)
            children = self.me.children(recursive=True)
        except self.psutil.Error:
            children = []
        for p in children:
            try:
                title = " ".join(p.cmdline())[:120] or p.name()
                mem = p.memory_full_info()
            except (self.psutil.Error, OSError):
                continue
            entry = self.procs.setdefault(p.pid, {"pid": p.pid, "title": title, "rss": 0, "uss": 0, "trial": False})
            if any(t in title for t in TRIAL_TITLES):
                entry["trial"] = True
                entry["title"] = title
            entry["rss"] = max(entry["rss"], mem.rss)
            if entry["trial"]:
                self.rss_series.setdefault(p.pid, []).append((round(time.time() - self.t0, 2), mem.rss))
            entry["uss"] = max(entry["uss"], getattr(mem, "uss", 0))
        parts = checkpoint_bytes(self.run_dir, self.tmp)
        self.largest_checkpoint = max(self.largest_checkpoint, parts.pop("_largest", 0))
        total = sum(parts.values())
        self.disk_series.append((round(time.time() - self.t0, 2), total))
        if total > self.disk_peak:
            self.disk_peak, self.disk_peak_parts = total, parts

    def trial_workers(self) -> list[dict]:
        return [p for p in self.procs.values() if p["trial"]]


def checkpoint_bytes(run_dir: Path, tmp: Path) -> dict[str, int]:
    parts = {"run_dir_checkpoints": 0, "best": 0, "trial_local": 0}
    seen: set = set()  # best/ hard-links the files of the trial checkpoint it came from: count them once
    if run_dir.exists():
        for root, dirs, _ in os.walk(run_dir):
            for d in sorted(dirs):
                if d.startswith("checkpoint_"):
                    size = common.dir_size(os.path.join(root, d), seen)
                    parts["run_dir_checkpoints"] += size
                    parts["_largest"] = max(parts.get("_largest", 0), size)
                    dirs.remove(d)
        for d in run_dir.iterdir():
            if d.name == "best" or d.name.startswith(".best."):  # best/ and its swap folders
                parts["best"] += common.dir_size(d, seen)
    for work in tmp.glob("stune-trial-*"):
        parts["trial_local"] += common.dir_size(work, seen)
    return parts


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None, help="[30; quick 3]")
    p.add_argument("--steps", type=int, default=None, help="max_steps per trial [6; quick 4]")
    p.add_argument("--evals", type=int, default=None, help="evaluations_per_trial [2]")
    p.add_argument("--eval-rows", type=int, default=None, help="eval pairs [50 of the embedded 400]")
    p.add_argument("--concurrency", type=int, default=None, help="max_concurrent_trials [stune's default, 2]")
    p.add_argument("--gradient-cache", type=int, default=None, metavar="N",
                   help="gradient_cache_mini_batch_size: embed at most N texts at once [unset: a whole batch]")
    args = p.parse_args()
    bench = common.Bench("resources", args)
    quick = args.quick
    trials = args.trials or (3 if quick else 30)
    steps = args.steps or (4 if quick else 6)
    evals = args.evals or 2
    work = bench.work
    if quick:
        model = common.tiny_model(work)
        data = common.tiny_data(work)
        data.pop("test", None)
        model_label, weights_of = "tiny random BERT (tests/tiny.py)", model
    else:
        model = None
        data = {"train": str(common.DEFAULT_DATA / "train.csv"),
                "eval": common.subset(common.DEFAULT_DATA / "eval.csv", args.eval_rows or 50, work / "eval.csv")}
        model_label, weights_of = "all-MiniLM-L6-v2 (bundled)", common.minilm_path()
    model_bytes = common.model_size_bytes(weights_of)

    # Trial workers inherit this TMPDIR (their local checkpoints land here); Ray's own session
    # folder stays in /tmp (a long TMPDIR would make its socket paths too long).
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_TMPDIR"] = os.environ.get("RAY_TMPDIR", "/tmp")
    os.environ["TMPDIR"] = str(tmp)

    from trainers.config import parse_config
    from tune.config import SweepConfig
    from tune.engine import run_sweep

    raw = {"data": data, "trials": trials, "max_steps": steps, "evaluations_per_trial": evals}
    if model:
        raw["model"] = model
    if args.concurrency:
        raw["max_concurrent_trials"] = args.concurrency
    if args.gradient_cache:
        raw["gradient_cache_mini_batch_size"] = args.gradient_cache
    config = parse_config(SweepConfig, raw)
    concurrency = config.max_concurrent_trials
    run_dir = work / "run"
    cache = f", gradient cache of {args.gradient_cache} texts" if args.gradient_cache else ""
    print(f"resources: {trials} trials x {steps} steps, {evals} evaluations, {concurrency} concurrent{cache}, default search space, "
          f"{model_label} ({model_bytes / MB:.1f} MB of weights); load {common.fmt_load(common.loadavg())}")
    sampler = Sampler(run_dir, tmp)
    sampler.start()
    t0 = time.time()
    try:
        summary = run_sweep(config, str(run_dir), force=True)
    finally:
        sampler.stop()
    wall = time.time() - t0
    workers = sampler.trial_workers()
    peak_rss = max((w["rss"] for w in workers), default=0)
    peak_uss = max((w["uss"] for w in workers), default=0)
    disk_bound = (concurrency + 1) * model_bytes
    checkpoint_size = sampler.largest_checkpoint
    rows = [[f"trial worker pid {w['pid']}", w["rss"] / MB, w["uss"] / MB] for w in workers]
    rows.append(["driver (this process: Ray driver, searcher, recorder)", sampler.driver_rss / MB, None])
    common.table(f"Peak memory, MB ({summary['counts']} trials, {wall:.0f} s)", ["process", "peak RSS", "peak USS"], rows)
    parts = {k: round(v / MB, 1) for k, v in sampler.disk_peak_parts.items()}
    common.table("Peak checkpoint disk, MB", ["peak total", "of which run-dir checkpoints", "best/", "trials' local", "bound (concurrent+1) x weights", "one trial checkpoint"],
                 [[sampler.disk_peak / MB, parts.get("run_dir_checkpoints"), parts.get("best"), parts.get("trial_local"), disk_bound / MB,
                   checkpoint_size / MB if checkpoint_size else None]])
    met_rss = peak_rss <= TARGET_RSS if workers else None
    met_disk = sampler.disk_peak <= disk_bound
    common.table("Targets", ["figure", "measured", "target", ""], [
        ["peak RSS per trial worker", f"{peak_rss / MB:.0f} MB", f"<= {TARGET_RSS / MB:.0f} MB", common.verdict(met_rss)],
        ["peak checkpoint disk", f"{sampler.disk_peak / MB:.0f} MB", f"<= {disk_bound / MB:.0f} MB", common.verdict(met_disk)],
    ])
    plot_path = plot(sampler.disk_series, sampler.rss_series, disk_bound, checkpoint_size, bench.out / f"{bench.stem}.png", model_label, trials, concurrency)
    peaks = trial_at_peaks(run_dir, sampler)
    common.table("Trial running at each worker's peak", ["worker pid", "peak RSS, MB", "trial", "loss", "batch", "peak inside its reports"],
                 [[p["pid"], p["rss"] / MB, p["trial_id"], p["loss"], p["batch"], p["inside_trial"]] for p in peaks])
    with open(run_dir / "trials.csv", newline="") as fh:
        mix = collections.Counter((row["loss"], row["per_device_train_batch_size"]) for row in csv.DictReader(fh))
    common.table("Trials by loss and batch size", ["loss", "batch", "trials"], [[loss, batch, n] for (loss, batch), n in sorted(mix.items())])
    after = checkpoint_bytes(run_dir, tmp)
    after.pop("_largest", None)
    print(f"checkpoint disk after the sweep: {sum(after.values()) / MB:.0f} MB ({', '.join(f'{k} {v / MB:.0f}' for k, v in after.items())})")
    bench.write({
        "setup": {"model": model_label, "model_weights_bytes": model_bytes, "trials": trials, "steps": steps,
                  "evaluations_per_trial": evals, "max_concurrent_trials": concurrency,
                  "gradient_cache_mini_batch_size": args.gradient_cache, "eval_pairs": len(common.read_rows(data["eval"])[1])},
        "targets": {"rss_bytes": TARGET_RSS, "disk_bytes": disk_bound},
        "met": {"rss": met_rss, "disk": met_disk}, "plot": plot_path,
        "peak_worker_rss_bytes": peak_rss, "peak_worker_uss_bytes": peak_uss, "driver_rss_bytes": sampler.driver_rss,
        "trial_workers": workers, "other_processes": [p for p in sampler.procs.values() if not p["trial"]],
        "peak_checkpoint_disk_bytes": sampler.disk_peak, "peak_checkpoint_disk_parts": sampler.disk_peak_parts,
        "checkpoint_disk_after_bytes": sum(after.values()), "checkpoint_disk_after_parts": after, "one_trial_checkpoint_bytes": checkpoint_size,
        "disk_series": sampler.disk_series[:: max(1, len(sampler.disk_series) // 400)],
        "worker_rss_series": {str(pid): series[:: max(1, len(series) // 400)] for pid, series in sampler.rss_series.items()},
        "sweep_wall_s": round(wall, 1), "counts": summary["counts"],
        "trial_at_peaks": peaks, "trial_mix": [{"loss": loss, "batch": batch, "trials": n} for (loss, batch), n in sorted(mix.items())],
    })
    bench.close()


def trial_at_peaks(run_dir: Path, sampler: Sampler) -> list[dict]:
    """For each trial worker: the trial it ran when its RSS peaked (from the pid and timestamps in
    each trial's result.json), with its loss and batch size: the peak depends on which ran. A
    worker that reported no trial is listed with none."""
    spans = []  # (pid, start, end, trial_id, config)
    for result in run_dir.glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if reports:
            first, last = reports[0], reports[-1]
            start = first["timestamp"] - first.get("time_this_iter_s", 0) - 1  # timestamps are whole seconds
            spans.append((first.get("pid"), start, last["timestamp"] + 1, first.get("trial_id"), first.get("config", {})))
    found = []
    for pid, series in sampler.rss_series.items():
        if not series:
            continue
        t, rss = max(series, key=lambda point: point[1])
        at = sampler.t0 + t
        mine = [span for span in spans if span[0] == pid]
        if not mine:  # an actor Ray started that reported no trial (seen in a quick run): its peak is its start-up's
            found.append({"pid": pid, "rss": rss, "trial_id": None, "loss": None, "batch": None, "inside_trial": False})
            continue
        pid_, start, end, trial_id, config = min(mine, key=lambda span: max(span[1] - at, at - span[2], 0))
        found.append({"pid": pid, "rss": rss, "trial_id": trial_id, "loss": config.get("loss"),
                      "batch": config.get("per_device_train_batch_size"), "inside_trial": start <= at <= end})
    return found


def plot(series, rss_series: dict, bound: float, checkpoint: int, path: Path, model_label: str, trials: int, concurrency: int) -> str:
    plt = common.pyplot()
    fig, (ax, mem) = plt.subplots(2, 1, figsize=(7, 6), dpi=120, sharex=True)
    ax.plot([t for t, _ in series], [b / MB for _, b in series], lw=1, color="tab:blue", label="checkpoint bytes on disk")
    ax.axhline(bound / MB, color="tab:red", ls="--", lw=1, label="target: (concurrent + 1) x weights")
    if checkpoint:
        ax.axhline((concurrency * checkpoint + bound / (concurrency + 1)) / MB, color="tab:gray", ls=":", lw=1,
                   label="concurrent x trial checkpoint + best/")
    ax.set_ylabel("MB")
    ax.set_title(f"Checkpoint disk during a {trials}-trial sweep ({concurrency} concurrent), {model_label}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for pid, points in rss_series.items():
        mem.plot([t for t, _ in points], [r / MB for _, r in points], lw=1, label=f"trial worker {pid}")
    mem.axhline(TARGET_RSS / MB, color="tab:red", ls="--", lw=1, label="target")
    mem.set_xlabel("seconds into the sweep")
    mem.set_ylabel("RSS, MB")
    mem.set_title("Memory of each trial worker (one process runs many trials: reuse_actors)", fontsize=9)
    mem.legend(fontsize=7)
    mem.grid(alpha=0.3)
    return common.save_figure(fig, path)


if __name__ == "__main__":
    main()
