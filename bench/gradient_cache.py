"""What gradient caching costs and saves: seconds per training step and peak RSS of one fine-tune,
per loss, with ``gradient_cache_mini_batch_size`` unset and at each N given.

    python bench/gradient_cache.py           # published figures: bundled MiniLM, batch 32, 20 steps
    python bench/gradient_cache.py --quick   # smoke run: tiny model, 6 steps

Each configuration runs ``trainers.train.fine_tune`` in a fresh process on one thread (so its peak
RSS, ``ru_maxrss``, is that configuration's alone) on the embedded data, without the base model's
scores and with one evaluation at the end; seconds per step are the median gap between the ends of
steps 2..n (the first step's set-up left out). Configurations run one after another, round after
round (``--rounds``), so that a change in the machine's pace falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOSSES = ("TripletLoss", "CoSENTLoss", "MultipleNegativesRankingLoss")


def one_run(loss: str, batch: int, cache: int, steps: int, model: str | None, data: dict | None, work: str) -> dict:
    """One fine-tune in this process; its figures as a dict (run by ``--one`` in a child process)."""
    import resource
    import statistics
    import time

    import torch

    torch.set_num_threads(1)
    from trainers import train
    from trainers.config import TrainConfig

    ends: list[float] = []
    on_step_end = train._Watcher.on_step_end

    def timed_step_end(self, args, state, control, **kwargs):  # fine_tune builds its callbacks itself
        ends.append(time.monotonic())
        return on_step_end(self, args, state, control, **kwargs)

    train._Watcher.on_step_end = timed_step_end
    raw = {"loss": loss, "per_device_train_batch_size": batch, "max_steps": steps, "eval_steps": steps,
           "gradient_cache_mini_batch_size": cache or None, **({"model": model} if model else {}),
           **({"data": data} if data else {})}
    _, result = train.fine_tune(TrainConfig.model_validate(raw), work, score_base=False, evaluations=1,
                                keep_best_model=False, resumable=False)
    gaps = [b - a for a, b in zip(ends[1:], ends[2:])]
    return {"loss": loss, "batch": batch, "gradient_cache_mini_batch_size": cache or None, "steps": steps,
            "s_per_step": round(statistics.median(gaps), 4) if gaps else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "eval_spearman_cosine": round(result.best["metrics"]["spearman_cosine"], 4)}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--losses", nargs="+", default=None, help=f"[{' '.join(LOSSES)}]")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="gradient_cache_mini_batch_size values, 0 = unset [0 8 16 32; quick 0 4]")
    p.add_argument("--batch", type=int, default=32, help="per_device_train_batch_size [32]")
    p.add_argument("--steps", type=int, default=None, help="steps per run [20; quick 6]")
    p.add_argument("--rounds", type=int, default=1, help="times each configuration runs [1]")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: one configuration, as JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(**json.loads(args.one))))
        return
    bench = common.Bench("gradient_cache", args)
    losses = args.losses or (["TripletLoss", "CoSENTLoss"] if args.quick else list(LOSSES))
    sizes = args.sizes or ([0, 4] if args.quick else [0, 8, 16, 32])
    steps = args.steps or (6 if args.quick else 20)
    model = data = None
    label = "all-MiniLM-L6-v2 (bundled), embedded data"
    if args.quick:
        model, data = common.tiny_model(bench.work), common.tiny_data(bench.work)
        label = "tiny random BERT (tests/tiny.py)"
    print(f"gradient caching: {', '.join(losses)} at batch {args.batch}, {steps} steps, sizes {sizes}, {args.rounds} round(s), "
          f"{label}; load {common.fmt_load(common.loadavg())}")
    runs = []
    for round_ in range(args.rounds):
        for loss in losses:
            for cache in sizes:
                spec = {"loss": loss, "batch": args.batch, "cache": cache, "steps": steps, "model": model, "data": data,
                        "work": str(bench.work / f"run-{round_}-{loss}-{cache}")}
                proc = subprocess.run([common.PYTHON, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{loss} with gradient cache {cache or 'unset'} failed:\n{proc.stderr[-3000:]}")
                run = {**json.loads(proc.stdout.strip().splitlines()[-1]), "round": round_ + 1, "loadavg": common.loadavg()}
                runs.append(run)
                print(f"  {loss} N={cache or '-'}: {run['s_per_step']} s/step, {run['peak_rss_mib']} MiB")
    rows = []
    for loss in losses:
        plain = [r for r in runs if r["loss"] == loss and r["gradient_cache_mini_batch_size"] is None]
        base = sum(r["s_per_step"] for r in plain) / len(plain) if plain else None
        for cache in sizes:
            mine = [r for r in runs if r["loss"] == loss and (r["gradient_cache_mini_batch_size"] or 0) == cache]
            pace = sum(r["s_per_step"] for r in mine) / len(mine)
            rows.append([loss, cache or "unset", " / ".join(f"{r['s_per_step']:.3f}" for r in mine),
                         f"{(pace / base - 1) * 100:+.0f} %" if base and cache else "–",
                         " / ".join(str(r["peak_rss_mib"]) for r in mine),
                         " / ".join(f"{r['eval_spearman_cosine']:.4f}" for r in mine)])
    common.table(f"Per step at batch {args.batch} ({label}, one thread)",
                 ["loss", "gradient_cache_mini_batch_size", "s/step (each round)", "vs unset", "peak RSS MiB", f"eval spearman after {steps} steps"], rows)
    bench.write({"setup": {"model": label, "batch": args.batch, "steps": steps, "sizes": sizes, "rounds": args.rounds, "threads": 1},
                 "runs": runs})
    bench.close()


if __name__ == "__main__":
    main()
