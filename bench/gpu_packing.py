"""GPU packing: throughput (trial-steps per second across the GPU) of a sweep of the bundled MiniLM
with ``gpus_per_trial`` 1, 0.5 and 0.25 (1, 2 and 4 trials sharing one GPU), and the GPU
utilization sampled while the trials train.

    python bench/gpu_packing.py            # on a machine with a CUDA GPU
    python bench/gpu_packing.py --quick    # smoke run (fractions 1 and 0.5, short trials)

On a machine without a GPU it prints "no GPU present" and exits 0 (nothing is measured).

Each fraction runs ``stune sweep`` (a fresh process each) on the same fixed configuration (no
search freedom: CoSENTLoss, batch 64, lr 5e-5), with ``max_concurrent_trials`` = GPUs / fraction
and 2 trials per concurrent slot. Throughput = all trial-steps / (last step of any trial - first
step of any trial), from the step timestamps of ``bench/hooks``; start-up is excluded (it is the
same for every fraction and is measured by bench/overhead.py). GPU utilization and memory come
from ``nvidia-smi`` every 0.5 s within the same window.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FRACTIONS = [1.0, 0.5, 0.25]


def gpu_count() -> int:
    import shutil

    if not os.path.exists("/proc/driver/nvidia/version") and shutil.which("nvidia-smi") is None:
        return 0  # no NVIDIA driver: answer without importing torch
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


class GpuSampler(threading.Thread):
    """``nvidia-smi`` every ``every`` seconds: (time, utilization % per GPU, memory MiB per GPU)."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True, name="gpu-sampler")
        self.every = every
        self.samples: list[tuple[float, list[float], list[float]]] = []
        self._halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=10,
                ).stdout
                util, mem = [], []
                for line in out.strip().splitlines():
                    u, m = (float(x) for x in line.split(","))
                    util.append(u)
                    mem.append(m)
                self.samples.append((time.time(), util, mem))
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self.error = str(exc)
                return
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"samples": 0, "util_mean": None, "util_median": None, "mem_peak_mib": None, "series": []}
        util = [statistics.mean(s[1]) for s in inside]
        return {"samples": len(inside), "util_mean": round(statistics.mean(util), 1),
                "util_median": round(statistics.median(util), 1),
                "mem_peak_mib": max(max(s[2]) for s in inside),
                # (seconds into the training window, mean utilization %, total memory MiB): for the plot
                "series": [(round(s[0] - start, 2), round(statistics.mean(s[1]), 1), sum(s[2])) for s in inside]}


def sweep_config(fraction: float, gpus: int, *, steps: int, evals: int, cpus: float, data: dict, dry_run: bool) -> dict:
    concurrency = max(1, round(gpus / fraction))
    hyper = {"learning_rate": 5e-5, "per_device_train_batch_size": 64, "warmup_ratio": 0.1}
    return {
        "data": data,
        "loss": {"name": "CoSENTLoss", "scale": 20.0}, "max_steps": steps, "evaluations_per_trial": evals,
        "search": {"losses": ["CoSENTLoss"], "CoSENTLoss": {"scale": 20.0}, **hyper},
        **hyper, "scheduler": "none", "trials": 2 * concurrency, "max_concurrent_trials": concurrency,
        "cpus_per_trial": cpus, "gpus_per_trial": 0 if dry_run else fraction, "seed": 42,
    }


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="steps per trial [300; quick 60]")
    p.add_argument("--evals", type=int, default=2, help="evaluations per trial [2]")
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="gpus_per_trial values [1 0.5 0.25; quick 1 0.5]")
    p.add_argument("--gradient-cache", type=int, default=None, metavar="N",
                   help="gradient_cache_mini_batch_size: embed at most N texts at once, less GPU memory per trial [unset]")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="no GPU needed: run the same sweeps on CPU (gpus_per_trial 0) to check this script end to end")
    args = p.parse_args()
    gpus = gpu_count()
    if gpus == 0 and not args.cpu_dry_run:
        print("no GPU present (torch.cuda.is_available() is False): the GPU packing benchmark needs a CUDA GPU; "
              "nothing measured. Run `python bench/gpu_packing.py` on a GPU machine.")
        return
    dry = args.cpu_dry_run and gpus == 0
    bench = common.Bench("gpu_packing_cpu_dry_run" if dry else "gpu_packing", args)
    fractions = args.fractions or ([1.0, 0.5] if args.quick else FRACTIONS)
    steps = args.steps or (60 if args.quick else 300)
    n_gpu = 1 if dry else gpus
    cores = os.cpu_count() or 1
    most = max(1, round(n_gpu / min(fractions)))
    cpus = max(1, min(4, cores // most)) if not dry else 1
    data = {"train": str(common.DEFAULT_DATA / "train.csv"),
            "eval": common.subset(common.DEFAULT_DATA / "eval.csv", 200, bench.work / "eval.csv")}
    model = None
    if dry and args.quick:  # checking the script on a CPU: the tiny test model, a few steps
        model, data = common.tiny_model(bench.work), common.tiny_data(bench.work)
        data.pop("test", None)
        steps = args.steps or 4
    cache = f", gradient cache of {args.gradient_cache} texts" if args.gradient_cache else ""
    print(f"GPU packing: {common.gpu_name() or 'CPU dry run'}; fractions {fractions}; {steps} steps x batch 64 per trial{cache}, "
          f"{cpus} CPU(s) per trial; load {common.fmt_load(common.loadavg())}")
    import yaml

    sampler = GpuSampler() if not dry else None
    if sampler:
        sampler.start()
    rows, results, failures = [], [], []
    try:
        for fraction in fractions:
            cfg = sweep_config(fraction, n_gpu, steps=steps, evals=args.evals, cpus=cpus, data=data, dry_run=dry)
            if model:
                cfg["model"] = model
            if args.gradient_cache:
                cfg["gradient_cache_mini_batch_size"] = args.gradient_cache
            tag = f"g{fraction:g}"
            path = bench.work / f"{tag}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            marks = bench.work / f"{tag}.marks"
            load = common.loadavg()
            try:
                start, end, _ = common.run_timed([common.STUNE, "sweep", path, "--out", bench.work / tag, "--force"],
                                                 env=common.bench_env(marks), log=bench.work / f"{tag}.log", timeout=3600)
            except SystemExit as failed:  # one fraction failing (e.g. out of GPU memory) must not lose the others
                print(f"  gpus_per_trial {fraction:g}: FAILED\n{failed}")
                failures.append({"gpus_per_trial": fraction, "error": str(failed)[-2000:]})
                continue
            runs = [r for r in common.trainings(common.read_marks(marks)) if "first_step" in r and "last_step_end" in r]
            first = min(r["first_step"] for r in runs)
            last = max(r["last_step_end"] for r in runs)
            total_steps = sum(r["steps"] for r in runs)
            gpu = sampler.window(first, last) if sampler else {"util_mean": None, "util_median": None, "mem_peak_mib": None}
            # one trial's own pace: how much packing slows each trial down while the GPU as a whole does more
            paces = [r["steps"] / (r["last_step_end"] - r["first_step"]) for r in runs if r["last_step_end"] > r["first_step"]]
            per_trial = statistics.median(paces) if paces else 0.0
            result = {"gpus_per_trial": fraction, "concurrent_trials": cfg["max_concurrent_trials"], "trials": cfg["trials"],
                      "trial_steps": total_steps, "train_window_s": round(last - first, 2), "wall_s": round(end - start, 1),
                      "trial_steps_per_s": round(total_steps / (last - first), 3),
                      "median_trial_steps_per_s": round(per_trial, 3), "gpu": gpu, "loadavg": load}
            results.append(result)
            print(f"  gpus_per_trial {fraction:g}: {result['trial_steps_per_s']:.2f} trial-steps/s, "
                  f"GPU util {gpu['util_mean']} % (load {common.fmt_load(load)})")
    finally:
        if sampler:
            sampler.stop()
    if not results:
        raise SystemExit(f"every sweep failed: {failures}")
    base = results[0]["trial_steps_per_s"]
    for r in results:
        r["speedup_vs_first"] = round(r["trial_steps_per_s"] / base, 3)
        rows.append([r["gpus_per_trial"], r["concurrent_trials"], r["trials"], r["trial_steps"], r["train_window_s"],
                     r["trial_steps_per_s"], r["speedup_vs_first"], r["median_trial_steps_per_s"], r["gpu"]["util_mean"],
                     r["gpu"]["util_median"], r["gpu"]["mem_peak_mib"], common.fmt_load(r["loadavg"])])
    label = "tiny test model, CPU dry run" if model else "MiniLM"
    common.table(f"Throughput by gpus_per_trial ({label}, batch 64)",
                 ["gpus_per_trial", "concurrent", "trials", "trial-steps", "train window s", "trial-steps/s",
                  f"x vs {results[0]['gpus_per_trial']:g}", "one trial's steps/s", "GPU util mean %", "median %",
                  "GPU mem peak MiB", "load"], rows)
    plot_path = plot(results, bench.out / f"{bench.stem}.png", label, common.gpu_name() or "CPU")
    bench.write({
        "setup": {"model": "tiny random BERT (tests/tiny.py)" if model else "all-MiniLM-L6-v2 (bundled)", "gpus": n_gpu, "dry_run_on_cpu": dry, "steps_per_trial": steps,
                  "evaluations_per_trial": args.evals, "batch": 64, "cpus_per_trial": cpus, "eval_pairs": 200,
                  "gradient_cache_mini_batch_size": args.gradient_cache,
                  "nvidia_smi_error": sampler.error if sampler else None},
        "results": results, "failures": failures, "plot": plot_path,
    })
    bench.close()
    if failures:  # the others are measured and written; the run as a whole did not do what was asked
        failed = ", ".join(f"{f['gpus_per_trial']:g}" for f in failures)
        raise SystemExit(f"gpus_per_trial {failed} failed (see above); the others are in {bench.out}")


def plot(results: list[dict], path, label: str, device: str) -> str:
    plt = common.pyplot()
    fig, (bars, util) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    names = [f"{r['gpus_per_trial']:g}\n({r['concurrent_trials']} concurrent)" for r in results]
    bars.bar(names, [r["trial_steps_per_s"] for r in results], color="tab:blue", label="all trials together")
    bars.plot(names, [r["median_trial_steps_per_s"] for r in results], "o-", color="tab:orange", label="one trial (median)")
    bars.set_xlabel("gpus_per_trial")
    bars.set_ylabel("trial-steps per second")
    bars.set_title(f"Throughput across the GPU, {label}, batch 64", fontsize=9)
    bars.legend(fontsize=7)
    bars.grid(alpha=0.3, axis="y")
    for r in results:
        series = r["gpu"].get("series") or []
        util.plot([t for t, _, _ in series], [u for _, u, _ in series], lw=1, label=f"gpus_per_trial {r['gpus_per_trial']:g}")
    util.set_xlabel("seconds into the training window")
    util.set_ylabel("GPU utilization %, nvidia-smi")
    util.set_ylim(0, 105)
    util.set_title(f"GPU utilization while trials train ({device})", fontsize=9)
    util.legend(fontsize=7)
    util.grid(alpha=0.3)
    return common.save_figure(fig, path)


if __name__ == "__main__":
    main()
