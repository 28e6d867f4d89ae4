"""Quality: each seed recipe's own hyperparameters vs the best of a default stune sweep on the same
data, scored on a held-out test split; the untuned base model too.

    python bench/quality.py            # published figures: every seed recipe, bundled MiniLM
    python bench/quality.py --quick    # smoke run: seed 004 only, tiny model, 2-trial sweep

The seeds' sample data (examples/seeds/data/00N_{train,eval}.csv) have no test split: rows are
assigned to a held-out test split by a hash of their first column (anchor / sentence 1), one
group in four, from both files, so every row of one anchor lands on the same side and the split
is the same on every run. The rest keep their train/eval role. The data files are not edited.

- recipe: ``stune train``'s fine-tune (trainers.train.fine_tune) with the recipe's loss and
  hyperparameters; like ``stune train`` it keeps the best of its evaluations.
- sweep: ``stune sweep`` on the recipe file (every loss searched, stune's default sweep: 12
  trials, TPE + ASHA) with the same data; its best checkpoint is scored on test as
  ``stune export`` does.
- Length: every run trains the recipe's num_train_epochs, capped at ``--max-steps`` steps (30).
  The recipe and every sweep trial get the same cap; the table says where it applied.

Target: sweep test spearman_cosine >= recipe + 0.02, on average over the seeds.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_GAIN = 0.02
SEEDS_DIR = common.ROOT / "examples" / "seeds"
TEST_SHARE = 4  # one group in TEST_SHARE goes to test


def split_seed(recipe, work: Path) -> dict[str, str]:
    """train/eval/test CSVs for a recipe's data, the test split held out by group hash."""
    out = {}
    tests: list[list[str]] = []
    header = None
    for role in ("train", "eval"):
        header, rows = common.read_rows(getattr(recipe.data, role))
        keep = [r for r in rows if common.stable_hash(r[0]) % TEST_SHARE != 0]
        tests += [r for r in rows if common.stable_hash(r[0]) % TEST_SHARE == 0]
        out[role] = common.write_rows(work / f"{role}.csv", header, keep)
    out["test"] = common.write_rows(work / "test.csv", header, tests)
    return out


def epoch_steps(config) -> tuple[int, int]:
    """(steps of ``num_train_epochs`` for this config's loss and batch size, as fine_tune counts
    them; the number of scored training pairs, the most any loss's adapted data can hold)."""
    from trainers.data import adapt, load_splits
    from trainers.losses import get_loss
    from trainers.train import total_steps

    splits = load_splits(config, with_test=False)
    columns, _ = adapt(splits.train.pairs, get_loss(config.loss.name).shape,
                       positive_threshold=config.data.positive_threshold, seed=config.seed)
    n = len(next(iter(columns.values())))
    # every loss reads at most all scored pairs: the most examples a sweep trial can get
    return total_steps(config.model_copy(update={"max_steps": None}), n), len(splits.train.pairs)


def recipe_config(seed_file: Path, data: dict[str, str], model: str | None):
    from trainers.config import TrainConfig, parse_config, read_yaml

    raw = read_yaml(str(seed_file))
    raw["data"] = {**(raw.get("data") or {}), **data}
    if model:
        raw["model"] = model
    return parse_config(TrainConfig, raw, str(seed_file))


def evaluate_on(model_path: str | None, config) -> dict[str, float]:
    """The model's scores on the config's test split."""
    from trainers.data import config_split
    from trainers.evaluation import evaluate
    from trainers.model import load_model

    model = load_model(model_path, max_seq_length=config.max_seq_length)
    return evaluate(model, config_split(config, "test"), "test")


def spearman_ceiling(config) -> float:
    """The highest spearman_cosine any model can reach on the config's test split: similarities ordered exactly as
    the scores, ties broken arbitrarily. With 0/1 scores (triplets, positive pairs, 0/1 labels)
    it is below 1 and every model that ranks all positives above all negatives gets exactly it."""
    from scipy.stats import spearmanr

    from trainers.data import config_split

    scores = config_split(config, "test").pairs.score
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    perfect = [0.0] * len(scores)
    for rank, i in enumerate(order):
        perfect[i] = float(rank)
    return float(spearmanr(scores, perfect).statistic)


def run_seed(seed_file: Path, *, work: Path, model: str | None, cap: int, sweep_overrides: dict) -> dict:
    from trainers.config import load_train_config
    from trainers.data import config_split
    from trainers.evaluation import OBJECTIVE
    from trainers.train import fine_tune
    from tune.config import load_sweep_config
    from tune.engine import run_sweep

    name = seed_file.stem
    work.mkdir(parents=True, exist_ok=True)
    recipe = load_train_config(str(seed_file))
    data = split_seed(recipe, work)
    sizes = {k: len(common.read_rows(v)[1]) for k, v in data.items()}
    overrides = {"train": data["train"], "eval": data["eval"], "test": data["test"]}
    if model:
        overrides["model"] = model

    # recipe, as stune train runs it
    recipe = recipe_config(seed_file, data, model)
    own_steps, n_pairs = epoch_steps(recipe)
    recipe_capped = own_steps > cap
    if recipe_capped:
        recipe = recipe.model_copy(update={"max_steps": cap})
    load = common.loadavg()
    t0 = time.time()
    _, result = fine_tune(recipe, work / "recipe", keep_best_model=True)
    recipe_s = time.time() - t0

    # default sweep on the same file and data; the same cap on every trial
    sweep_cfg = load_sweep_config(str(seed_file), **overrides, **sweep_overrides)
    longest = math.ceil(n_pairs / 16) * sweep_cfg.num_train_epochs  # smallest batch of the default space
    sweep_capped = sweep_cfg.max_steps is None and longest > cap
    if sweep_capped:
        sweep_cfg = load_sweep_config(str(seed_file), **overrides, **sweep_overrides, max_steps=cap)
    t0 = time.time()
    summary = run_sweep(sweep_cfg, str(work / "sweep"), force=True)
    sweep_s = time.time() - t0
    best = summary["best"]
    sweep_scores = evaluate_on(str(work / "sweep" / "best"), recipe) if best else {}
    ceiling = spearman_ceiling(recipe)
    test_labels = sorted(set(config_split(recipe, "test").pairs.score))

    row = {
        "seed": name, "loss": recipe.loss.name, "sizes": sizes, "recipe_epoch_steps": own_steps,
        "recipe_steps": result.steps, "recipe_capped": recipe_capped, "sweep_capped": sweep_capped,
        "sweep_longest_trial_steps": int(min(longest, cap) if sweep_capped else longest),
        "base_test": result.base.get("test", {}).get(OBJECTIVE), "base_eval": result.base.get("eval", {}).get(OBJECTIVE),
        "recipe_eval": result.best["metrics"][OBJECTIVE], "recipe_test": (result.test or {}).get(OBJECTIVE),
        "sweep_eval": best[OBJECTIVE] if best else None, "sweep_test": sweep_scores.get(OBJECTIVE),
        "base_test_pearson": result.base.get("test", {}).get("pearson_cosine"),
        "recipe_test_pearson": (result.test or {}).get("pearson_cosine"),
        "sweep_test_pearson": sweep_scores.get("pearson_cosine"),
        "test_spearman_ceiling": ceiling, "test_score_levels": len(test_labels),
        "sweep_best_config": best["config"] if best else None, "sweep_best_step": best.get("step") if best else None,
        "sweep_counts": summary["counts"], "sweep_trials": sweep_cfg.trials,
        "recipe_s": round(recipe_s, 1), "sweep_s": round(sweep_s, 1), "loadavg": load,
    }
    if row["sweep_test"] is not None and row["recipe_test"] is not None:
        row["gain"] = row["sweep_test"] - row["recipe_test"]
        row["gain_pearson"] = row["sweep_test_pearson"] - row["recipe_test_pearson"]
    # every model at the ceiling: this test split cannot tell them apart by spearman
    row["saturated"] = all(row[k] is not None and row[k] >= ceiling - 1e-9 for k in ("base_test", "recipe_test", "sweep_test"))
    print(f"  {name}: base {row['base_test']:.4f}  recipe {row['recipe_test']:.4f}  sweep {row['sweep_test']:.4f} "
          f"(test spearman_cosine; {row['recipe_s']:.0f} s + {row['sweep_s']:.0f} s, load {common.fmt_load(load)})")
    return row


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", default=None, help="seed recipes, e.g. 000 002 [all in examples/seeds; quick: 004]")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per run, recipe and sweep trials alike [30; quick 2]")
    p.add_argument("--trials", type=int, default=None, help="sweep trials [stune's default, 12; quick 2]")
    args = p.parse_args()
    bench = common.Bench("quality", args)
    quick = args.quick
    names = args.seeds or (["004"] if quick else sorted(f.stem for f in SEEDS_DIR.glob("[0-9][0-9][0-9].yaml")))
    cap = args.max_steps or (2 if quick else 30)
    model = common.tiny_model(bench.work) if quick else None
    model_label = "tiny random BERT (tests/tiny.py)" if quick else "all-MiniLM-L6-v2 (bundled)"
    sweep_overrides = {}
    if args.trials or quick:
        sweep_overrides["trials"] = args.trials or 2
    if quick:
        sweep_overrides["max_concurrent_trials"] = 1
    print(f"quality: seeds {', '.join(names)}, {model_label}, steps capped at {cap} per run; sweep: "
          f"{sweep_overrides.get('trials', 'default')} trials; load {common.fmt_load(common.loadavg())}")
    rows = []
    for name in names:
        rows.append(run_seed(SEEDS_DIR / f"{name}.yaml", work=bench.work / name, model=model, cap=cap,
                             sweep_overrides=sweep_overrides))
        bench.sample_load(name)

    gains = [r["gain"] for r in rows if "gain" in r]
    informative = [r["gain"] for r in rows if "gain" in r and not r["saturated"]]
    pearson_gains = [r["gain_pearson"] for r in rows if "gain_pearson" in r]
    mean = lambda key: round(statistics.mean(r[key] for r in rows if r[key] is not None), 4)  # noqa: E731
    table_rows = [[r["seed"], r["loss"], f"{r['sizes']['train']}/{r['sizes']['eval']}/{r['sizes']['test']}",
                   f"{r['recipe_steps']}{' (capped)' if r['recipe_capped'] else ''}", r["sweep_longest_trial_steps"],
                   r["base_test"], r["recipe_test"], r["sweep_test"], r.get("gain"),
                   f"{r['test_spearman_ceiling']:.4f}{' (all at it)' if r['saturated'] else ''}",
                   r["base_test_pearson"], r["recipe_test_pearson"], r["sweep_test_pearson"],
                   (r["sweep_best_config"] or {}).get("loss"), common.fmt_load(r["loadavg"])] for r in rows]
    table_rows.append(["mean", "", "", "", "", mean("base_test"), mean("recipe_test"), mean("sweep_test"),
                       round(statistics.mean(gains), 4) if gains else None, "",
                       mean("base_test_pearson"), mean("recipe_test_pearson"), mean("sweep_test_pearson"), "", ""])
    common.table("Held-out test scores: base model, seed recipe, best of a default sweep",
                 ["seed", "recipe loss", "train/eval/test rows", "recipe steps", "longest sweep trial", "base spearman",
                  "recipe spearman", "sweep spearman", "sweep - recipe", "spearman ceiling", "base pearson",
                  "recipe pearson", "sweep pearson", "sweep's best loss", "load"], table_rows)
    plot_path = plot(rows, bench.out / f"{bench.stem}.png", model_label)
    met = statistics.mean(gains) >= TARGET_GAIN if gains else None
    common.table("Target", ["figure", "measured", "target", ""], [
        ["sweep - recipe, mean test spearman_cosine", round(statistics.mean(gains), 4) if gains else None,
         f">= +{TARGET_GAIN}", common.verdict(met)],
        ["  same, seeds whose test split is not saturated", round(statistics.mean(informative), 4) if informative else None,
         f">= +{TARGET_GAIN}", common.verdict(statistics.mean(informative) >= TARGET_GAIN if informative else None)],
        ["  sweep - recipe, mean test pearson_cosine (for reference)", round(statistics.mean(pearson_gains), 4) if pearson_gains else None,
         "–", "–"],
    ])
    bench.write({
        "setup": {"model": model_label, "seeds": names, "max_steps_cap": cap, "test_split": f"1 group in {TEST_SHARE} by hash of column 1, from train and eval",
                  "sweep_overrides": sweep_overrides},
        "target": {"mean_gain": TARGET_GAIN}, "met": met, "plot": plot_path,
        "mean": {"base_test": mean("base_test"), "recipe_test": mean("recipe_test"), "sweep_test": mean("sweep_test"),
                 "gain": round(statistics.mean(gains), 4) if gains else None,
                 "gain_unsaturated_seeds": round(statistics.mean(informative), 4) if informative else None,
                 "gain_pearson": round(statistics.mean(pearson_gains), 4) if pearson_gains else None},
        "seeds": rows,
    })
    bench.close()


def plot(rows: list[dict], path: Path, model_label: str) -> str:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    width = 0.27
    for i, (key, label, color) in enumerate((("base_test", "base model", "tab:gray"), ("recipe_test", "seed recipe", "tab:orange"),
                                             ("sweep_test", "best of default sweep", "tab:blue"))):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [r[key] or 0 for r in rows], width, label=label, color=color)
    ax.set_xticks(range(len(rows)), [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel("held-out test spearman_cosine")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(f"Seed recipes vs a default stune sweep, {model_label}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return common.save_figure(fig, path)


if __name__ == "__main__":
    main()
