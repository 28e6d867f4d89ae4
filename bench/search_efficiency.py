"""Search efficiency: at an equal budget of trial-steps, TPE + ASHA vs random search without early
stopping vs random + ASHA, several seeds each, on the full default search space (every loss,
learning rate, batch size, warmup).

    python bench/search_efficiency.py            # published figures: bundled MiniLM, embedded data, 3 seeds
    python bench/search_efficiency.py --quick    # smoke run: tiny model, 1 seed, 2-trial budget, TPE+ASHA vs random

The budget is B = (random search's trials) x (steps per trial). Random search without early
stopping spends exactly B. The ASHA sweeps are given 3x as many trials and are stopped (as
Ctrl-C would: Ray saves its state and stops the trials) once their reported trial-steps reach B.
Every evaluation a trial reports adds the steps it trained since its previous report; the
best-so-far ``spearman_cosine`` (eval split) is plotted against these cumulative trial-steps.
Runs are interleaved seed by seed (for each seed: TPE + ASHA, random, random + ASHA) so that
all strategies see the same machine load.

Target: TPE + ASHA reaches random search's final best (same seed) in <= 1/2 of the trial-steps,
mean over seeds. A seed where it never gets there counts as 1.0 (the whole budget) and is
shown as "not reached".
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_FRACTION = 0.5
STRATEGIES = {  # name: (searcher, scheduler)
    "tpe+asha": ("tpe", "asha"),
    "random": ("random", "none"),
    "random+asha": ("random", "asha"),
}


class BudgetTracker:
    """``on_event`` for ``run_sweep``: cumulative trial-steps and best-so-far at each result;
    sends this process SIGINT (stune's graceful stop) once the budget is spent."""

    def __init__(self, budget: int, stop_at_budget: bool):
        self.budget, self.stop_at_budget = budget, stop_at_budget
        self.steps_seen: dict[str, int] = {}
        self.used = 0
        self.best = float("-inf")
        self.curve: list[dict] = []
        self.stopped = False
        self.started = time.time()

    def __call__(self, kind, row, recorder) -> None:
        if kind != "result" or self.stopped and self.used >= self.budget:
            return
        trial = row["trial_id"]
        steps = int(float(row.get("steps") or 0))
        score = row.get("last_score")
        self.used += max(0, steps - self.steps_seen.get(trial, 0))
        self.steps_seen[trial] = steps
        if score is not None:
            self.best = max(self.best, float(score))
        self.curve.append({"trial_steps": self.used, "best": self.best, "score": score, "trial": trial,
                           "step": steps, "loss": row.get("loss"), "t": round(time.time() - self.started, 1)})
        if self.stop_at_budget and not self.stopped and self.used >= self.budget:
            self.stopped = True
            os.kill(os.getpid(), signal.SIGINT)


def run_one(name: str, seed: int, *, base: dict, budget: int, trials: int, work) -> dict:
    from trainers.config import parse_config
    from tune.config import SweepConfig
    from tune.engine import run_sweep

    searcher, scheduler = STRATEGIES[name]
    asha = scheduler == "asha"
    raw = {**base, "searcher": searcher, "scheduler": scheduler, "seed": seed, "trials": trials * 3 if asha else trials}
    config = parse_config(SweepConfig, raw)
    tracker = BudgetTracker(budget, stop_at_budget=asha)
    load = common.loadavg()
    started = time.time()
    try:
        summary = run_sweep(config, str(work / f"{name}-seed{seed}"), on_event=tracker, force=True)
        counts = summary["counts"]
    except KeyboardInterrupt:  # stopped at the budget
        if not tracker.stopped:
            raise
        counts = None
    wall = time.time() - started
    curve = [c for c in tracker.curve if c["trial_steps"] <= budget] or tracker.curve[:1]
    final = curve[-1]["best"] if curve else None
    print(f"  {name:12s} seed {seed}: best {final:.4f} after {curve[-1]['trial_steps'] if curve else 0} trial-steps, "
          f"{len(tracker.steps_seen)} trials, {wall:.0f} s (load {common.fmt_load(load)})")
    return {"strategy": name, "seed": seed, "searcher": searcher, "scheduler": scheduler, "trials_allowed": raw["trials"],
            "trials_run": len(tracker.steps_seen), "trial_steps_used": tracker.used, "best_at_budget": final,
            "wall_s": round(wall, 1), "loadavg": load, "counts": counts, "curve": tracker.curve,
            "startup_trials": config.random_startup_trials,
            "asha": {**config.asha.model_dump(), "grace_period": config.grace_period} if asha else None,
            "max_concurrent_trials": config.max_concurrent_trials}


def steps_to_reach(curve: list[dict], target: float, budget: int) -> int | None:
    for point in curve:
        if point["trial_steps"] > budget:
            return None
        if point["best"] >= target - 1e-12:
            return point["trial_steps"]
    return None


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="[0 1 2; quick 0]")
    p.add_argument("--random-trials", type=int, default=None, help="random search's trials; budget = this x steps [16; quick 2]")
    p.add_argument("--steps", type=int, default=None, help="max_steps per trial [12; quick 4]")
    p.add_argument("--evals", type=int, default=None, help="evaluations_per_trial = ASHA rungs [4, so that ASHA's default grace period is 2; quick 2]")
    p.add_argument("--eval-rows", type=int, default=None, help="eval pairs [100 of the embedded 400]")
    p.add_argument("--concurrency", type=int, default=None, help="max_concurrent_trials [stune's default, 2; quick 1]")
    p.add_argument("--startup-trials", type=int, default=None, help="TPE startup trials [stune's default]")
    p.add_argument("--grace-period", type=int, default=None, help="ASHA grace period [stune's default]")
    p.add_argument("--reduction-factor", type=float, default=None, help="ASHA reduction factor [stune's default]")
    p.add_argument("--strategies", nargs="+", default=None, choices=list(STRATEGIES),
                   help="[all three; quick: tpe+asha and random, the two the target compares]")
    p.add_argument("--random-from", default=None, metavar="JSON",
                   help="take random search's runs from this earlier result (same model, data, budget) instead of "
                        "running them again: with a seed and no early stopping they repeat exactly")
    args = p.parse_args()
    args.strategies = args.strategies or (["tpe+asha", "random"] if args.quick else list(STRATEGIES))
    bench = common.Bench("search_efficiency", args)
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    n_random = args.random_trials or (2 if quick else 16)
    steps = args.steps or (4 if quick else 12)
    evals = args.evals or (2 if quick else 4)
    budget = n_random * steps
    work = bench.work
    if quick:
        model = None  # made once the inputs are checked: it imports sentence-transformers (~5 s)
        data = common.tiny_data(work)
        data.pop("test", None)
        model_label = "tiny random BERT (tests/tiny.py)"
    else:
        model = None
        data = {"train": str(common.DEFAULT_DATA / "train.csv"),
                "eval": common.subset(common.DEFAULT_DATA / "eval.csv", args.eval_rows or 100, work / "eval.csv")}
        model_label = "all-MiniLM-L6-v2 (bundled)"
    # initial_points: []: no recipe-first trial, so each strategy is measured from its own proposals
    base = {"data": data, "max_steps": steps, "evaluations_per_trial": evals, "initial_points": []}
    if model:
        base["model"] = model
    if args.concurrency or quick:
        base["max_concurrent_trials"] = args.concurrency or 1
    if args.startup_trials:
        base["startup_trials"] = args.startup_trials
    asha = {k: v for k, v in (("grace_period", args.grace_period), ("reduction_factor", args.reduction_factor)) if v}
    if asha:
        base["asha"] = asha
    n_eval = len(common.read_rows(data["eval"])[1])
    setup = {"model": model_label, "budget_trial_steps": budget, "random_trials": n_random, "asha_trials_allowed": n_random * 3,
             "steps_per_trial": steps, "evaluations_per_trial": evals, "eval_pairs": n_eval, "seeds": seeds,
             "search_space": "stune default (every loss and its parameters, learning_rate, batch size, warmup_ratio)",
             "overrides": {k: v for k, v in base.items() if k not in ("data", "model")}}
    earlier = earlier_random_runs(args.random_from, setup) if args.random_from and "random" in args.strategies else []
    if quick:
        base["model"] = common.tiny_model(work)
    print(f"search efficiency: budget {budget} trial-steps (= {n_random} random trials x {steps} steps), {evals} evaluations "
          f"per trial, default search space (every loss), {model_label}, eval {n_eval} pairs, seeds {seeds}; "
          f"load {common.fmt_load(common.loadavg())}")

    runs = list(earlier)
    for seed in seeds:
        for name in args.strategies:
            if earlier and name == "random":
                continue
            runs.append(run_one(name, seed, base=base, budget=budget, trials=n_random, work=work))
            bench.sample_load(f"{name}-seed{seed}")

    figures = analyse(runs, seeds, budget, args.strategies)
    rows = []
    for name in args.strategies:
        f = figures["strategies"][name]
        rows.append([name, f["best_at_budget_mean"], f["best_at_budget_sd"], f["trials_run_mean"],
                     f["fraction_to_random_best_mean"], ", ".join(f["fraction_to_random_best_text"]), f["wall_s_mean"]])
    common.table(f"Equal budget of {budget} trial-steps, {len(seeds)} seed(s): best eval spearman_cosine",
                 ["strategy", "best at budget (mean)", "sd", "trials run (mean)",
                  "fraction of budget to reach random's final best (mean)", "per seed", "wall s (mean)"], rows)
    tpe = figures["strategies"].get("tpe+asha")
    met = None
    if tpe and "random" in args.strategies:
        met = tpe["fraction_to_random_best_mean"] <= TARGET_FRACTION
        common.table("Target", ["figure", "measured", "target", ""], [[
            "TPE + ASHA: trial-steps to random's final best / budget (mean over seeds)",
            tpe["fraction_to_random_best_mean"], f"<= {TARGET_FRACTION}", common.verdict(met)]])
    plot_path = plot(runs, args.strategies, budget, bench.out / f"{bench.stem}.png", model_label)
    bench.write({
        "setup": setup, "random_runs_from": args.random_from if earlier else None,
        "target": {"fraction_of_budget": TARGET_FRACTION}, "met": met,
        **figures, "plot": str(plot_path), "runs": runs,
    })
    bench.close()


def earlier_random_runs(path: str, setup: dict) -> list[dict]:
    """Random search's runs, one per seed of ``setup``, from an earlier result of this benchmark."""
    try:
        with open(path) as fh:
            before = json.load(fh)
        if before.get("benchmark") != "search_efficiency" or not isinstance(before.get("setup"), dict):
            raise ValueError("no search_efficiency result")
        before_runs = list(before["runs"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        sys.exit(f"--random-from: {path} is not a result of this benchmark ({exc}); give a search_efficiency*.json it wrote")
    for key in ("model", "budget_trial_steps", "steps_per_trial", "evaluations_per_trial", "eval_pairs"):
        if before["setup"].get(key) != setup[key]:
            sys.exit(f"--random-from: {path} was run with {key} {before['setup'].get(key)!r}, this run with "
                     f"{setup[key]!r}; leave --random-from out to run random search again")
    by_seed = {r["seed"]: r for r in before_runs if r.get("strategy") == "random"}
    missing = [seed for seed in setup["seeds"] if seed not in by_seed]
    if missing:
        sys.exit(f"--random-from: {path} has no random-search run for seed(s) {missing}; leave it out to run them")
    print(f"random search: runs of seeds {setup['seeds']} taken from {path}")
    return [by_seed[seed] for seed in setup["seeds"]]


def analyse(runs: list[dict], seeds: list[int], budget: int, strategies: list[str]) -> dict:
    random_best = {r["seed"]: r["best_at_budget"] for r in runs if r["strategy"] == "random"}
    out = {}
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        fractions, texts = [], []
        for r in mine:
            target = random_best.get(r["seed"])
            if target is None:
                continue
            reached = steps_to_reach(r["curve"], target, budget)
            r["steps_to_random_best"] = reached
            fractions.append(1.0 if reached is None else reached / budget)
            texts.append("not reached" if reached is None else f"{reached / budget:.2f}")
        bests = [r["best_at_budget"] for r in mine if r["best_at_budget"] is not None]
        out[name] = {
            "best_at_budget": bests,
            "best_at_budget_mean": round(statistics.mean(bests), 4) if bests else None,
            "best_at_budget_sd": round(statistics.stdev(bests), 4) if len(bests) > 1 else None,
            "trials_run_mean": round(statistics.mean(r["trials_run"] for r in mine), 1),
            "fraction_to_random_best": fractions,
            "fraction_to_random_best_text": texts,
            "fraction_to_random_best_mean": round(statistics.mean(fractions), 3) if fractions else None,
            "wall_s_mean": round(statistics.mean(r["wall_s"] for r in mine), 1),
        }
    return {"strategies": out}


def plot(runs: list[dict], strategies: list[str], budget: int, path, model_label: str):
    plt = common.pyplot()
    colors = {"tpe+asha": "tab:blue", "random": "tab:gray", "random+asha": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in strategies:
        for i, r in enumerate(x for x in runs if x["strategy"] == name):
            pts = [c for c in r["curve"] if c["trial_steps"] <= budget]
            if not pts:
                continue
            xs = [0] + [c["trial_steps"] for c in pts] + [budget]
            ys = [pts[0]["best"]] + [c["best"] for c in pts] + [pts[-1]["best"]]
            ax.step(xs, ys, where="post", color=colors.get(name), alpha=0.85, lw=1.6,
                    linestyle=["-", "--", ":"][i % 3], label=f"{name} (seed {r['seed']})")
    ax.set_xlabel("cumulative trial-steps")
    ax.set_ylabel("best-so-far eval spearman_cosine")
    ax.set_title(f"Search efficiency at equal budget ({budget} trial-steps), {model_label}", fontsize=9)
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return common.save_figure(fig, path)


if __name__ == "__main__":
    main()
