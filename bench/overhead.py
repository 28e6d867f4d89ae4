"""Orchestration overhead: N fixed configurations (no search freedom) run
(a) back-to-back in one Python process with plain sentence-transformers, and
(b) through ``stune sweep`` with the same steps, evaluations and checkpoints.

    python bench/overhead.py            # published figures: bundled MiniLM, embedded data
    python bench/overhead.py --quick    # smoke run: tiny model, 2 trials

Both sides are timed as whole commands (process start to exit, imports and model loading
included), run alternately (a, b, a, b, ...) so that both see the same machine load; the ratio
is taken per pair and over the sums. Step timestamps come from ``bench/hooks`` (no change to
stune). Both run one trial at a time on one thread (``--threads``; stune: ``cpus_per_trial``, plain:
``torch.set_num_threads``): on a shared, loaded machine two torch threads per process stall on
each other (a tiny model's step went from 0.05 s to 1-3 s), which would swamp what is measured.
Both use the same seed and data order, so the scores of (a) and (b) must match: a check that
they did the same training.

Reported: wall (b)/(a); command start to the first training step; and (b)'s extra time split
into start-up (to the first step), between trials (last step of one to first step of the next:
final evaluation and checkpoint, trial hand-over, model load), inside trials (first to last
step: evaluations, checkpoints, reports) and the tail (last step to exit). Scheduling overhead
per trial = (extra between + extra inside) / N.

Targets: wall (b)/(a) <= 1.05; command start to first training step <= 15 s; scheduling
overhead per trial <= 1 s.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_RATIO, TARGET_FIRST_STEP_S, TARGET_PER_TRIAL_S = 1.05, 15.0, 1.0
LOSS = {"name": "CoSENTLoss", "scale": 20.0}
HYPER = {"learning_rate": 5e-5, "per_device_train_batch_size": 16, "warmup_ratio": 0.1, "seed": 42, "max_seq_length": 128}


def plain_worker(spec_path: str) -> None:
    """(a): what a hand-written loop does, in one process: for each configuration load the
    model, build loss, evaluator and trainer, train with evaluations and checkpoints."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    def read(path):
        _, rows = common.read_rows(path)
        return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]

    s1, s2, score = read(spec["train"])
    train = Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score})
    e1, e2, escore = read(spec["eval"])
    scores = []
    for i in range(spec["trials"]):
        model = SentenceTransformer(spec["model"], local_files_only=True)
        model.max_seq_length = HYPER["max_seq_length"]
        eval_steps = spec["eval_steps"]
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(spec["work"]) / f"plain-{i}"), learning_rate=HYPER["learning_rate"],
            per_device_train_batch_size=HYPER["per_device_train_batch_size"], per_device_eval_batch_size=64,
            max_steps=spec["steps"], warmup_steps=HYPER["warmup_ratio"], seed=HYPER["seed"], data_seed=HYPER["seed"],
            eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps", save_steps=eval_steps,
            save_total_limit=1, logging_steps=max(1, min(eval_steps, 10)), report_to="none", disable_tqdm=True,
            # The weights only, as stune's trial checkpoints by default (plus its few-KB schedule and RNG
            # files): with Hugging Face's default, AdamW's state tripled what (a) writes at each save.
            save_only_model=True,
            dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        evaluator = EmbeddingSimilarityEvaluator(e1, e2, escore, batch_size=64, name="eval",
                                                 similarity_fn_names=["cosine"], write_csv=False)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                             loss=CoSENTLoss(model, scale=LOSS["scale"]), evaluator=evaluator)
        trainer.train()
        # the last evaluation's score, from the trainer's log (no extra evaluation)
        scores.append([h for h in trainer.state.log_history if "eval_spearman_cosine" in h][-1]["eval_spearman_cosine"])
    Path(spec["result"]).write_text(json.dumps({"scores": scores}))


def sweep_config(model: str | None, data: dict, trials: int, steps: int, evals: int, cores: int) -> dict:
    """(b): every dimension fixed to (a)'s values, so each trial is the same configuration."""
    config = {
        "data": data, "loss": LOSS, "max_steps": steps, "evaluations_per_trial": evals, "trials": trials,
        "search": {"losses": [LOSS["name"]], LOSS["name"]: {"scale": LOSS["scale"]},
                   "learning_rate": HYPER["learning_rate"], "per_device_train_batch_size": HYPER["per_device_train_batch_size"],
                   "warmup_ratio": HYPER["warmup_ratio"]},
        "scheduler": "none", "max_concurrent_trials": 1, "cpus_per_trial": cores,
        **{k: HYPER[k] for k in ("learning_rate", "per_device_train_batch_size", "warmup_ratio", "seed", "max_seq_length")},
    }
    if model is not None:
        config["model"] = model
    return config


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None, help="fixed configurations N [4; quick 2]")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial [20; quick 4]")
    p.add_argument("--evals", type=int, default=None, help="evaluations (and checkpoints) per trial [2]")
    p.add_argument("--repeats", type=int, default=None, help="(a, b) pairs [2; quick 1]")
    p.add_argument("--eval-rows", type=int, default=None, help="eval pairs [200 of the embedded eval split's 400; quick: all 40]")
    p.add_argument("--threads", type=int, default=1, help="torch threads = cpus_per_trial [1]")
    p.add_argument("--plain-worker", help=argparse_hidden())
    args = p.parse_args()
    if args.plain_worker:
        return plain_worker(args.plain_worker)

    bench = common.Bench("overhead", args)
    quick = args.quick
    trials = args.trials or (2 if quick else 4)
    steps = args.steps or (4 if quick else 20)
    evals = args.evals or 2
    repeats = args.repeats or (1 if quick else 2)
    cores = args.threads
    work = bench.work
    if quick:
        model_arg = model_path = common.tiny_model(work)
        data = common.tiny_data(work)
        data.pop("test", None)
        model_label = "tiny random BERT (tests/tiny.py)"
    else:
        model_arg, model_path = None, common.minilm_path()
        data = {"train": str(common.DEFAULT_DATA / "train.csv"), "eval": str(common.DEFAULT_DATA / "eval.csv")}
        data["eval"] = common.subset(data["eval"], args.eval_rows or 200, work / "eval.csv")
        model_label = "all-MiniLM-L6-v2 (bundled)"
    eval_steps = max(1, -(-steps // evals))
    n_eval = len(common.read_rows(data["eval"])[1])
    n_train = len(common.read_rows(data["train"])[1])
    print(f"overhead: {trials} fixed trials x {steps} steps, {evals} evaluations + checkpoints each, {model_label}, "
          f"train {n_train} / eval {n_eval} pairs, {cores} thread(s), {os.cpu_count()} cores; {repeats} x (plain, stune sweep); load {common.fmt_load(common.loadavg())}")

    import yaml

    pairs = []
    for r in range(repeats):
        rep = work / f"rep{r}"
        rep.mkdir(parents=True, exist_ok=True)
        # (a) plain sentence-transformers
        spec = {"model": model_path, "train": data["train"], "eval": data["eval"], "trials": trials, "steps": steps,
                "eval_steps": eval_steps, "threads": cores, "work": str(rep / "plain"), "result": str(rep / "plain.json")}
        (rep / "plain-spec.json").write_text(json.dumps(spec))
        marks_a = rep / "plain.marks"
        load_a = common.loadavg()
        # Ray gives a trial with N CPUs OMP_NUM_THREADS=N; a plain script is run the same way.
        a0, a1, _ = common.run_timed([common.PYTHON, __file__, "--plain-worker", rep / "plain-spec.json"],
                                     env=common.bench_env(marks_a, OMP_NUM_THREADS=str(cores)), log=rep / "plain.log")
        # (b) stune sweep, same configuration
        cfg = rep / "sweep.yaml"
        cfg.write_text(yaml.safe_dump(sweep_config(model_arg, data, trials, steps, evals, cores)))
        marks_b = rep / "sweep.marks"
        load_b = common.loadavg()
        b0, b1, _ = common.run_timed([common.STUNE, "sweep", cfg, "--out", rep / "run", "--force"],
                                     env=common.bench_env(marks_b), log=rep / "sweep.log")
        pair = analyse(a0, a1, marks_a, b0, b1, marks_b, trials)
        pair["loadavg"] = {"plain": load_a, "sweep": load_b, "after": common.loadavg()}
        pair["scores"] = {"plain": json.loads((rep / "plain.json").read_text())["scores"],
                          "sweep": sweep_scores(rep / "run")}
        pairs.append(pair)
        print(f"  pair {r + 1}/{repeats}: plain {pair['a']['wall_s']:.1f} s, stune {pair['b']['wall_s']:.1f} s, "
              f"ratio {pair['ratio']:.3f}  (load {common.fmt_load(pair['loadavg']['after'])})")

    figures = summarise(pairs, trials)
    rows = []
    for i, pair in enumerate(pairs, 1):
        a, b = pair["a"], pair["b"]
        rows.append([f"pair {i}", a["wall_s"], b["wall_s"], pair["ratio"], a["first_step_s"], b["first_step_s"],
                     pair["per_trial_overhead_s"], common.fmt_load(pair["loadavg"]["plain"])])
    f = figures
    rows.append(["all (sums)", f["wall_a_s"], f["wall_b_s"], f["ratio"], f["first_step_a_s"], f["first_step_b_s"],
                 f["per_trial_overhead_s"], "–"])
    common.table("Wall time: (a) plain sentence-transformers loop vs (b) stune sweep, same trials",
                 ["", "(a) s", "(b) s", "(b)/(a)", "(a) start->1st step s", "(b) start->1st step s", "(b) extra per trial s", "load (1/5/15 min)"], rows)
    common.table("Where (b)'s extra time goes (seconds, mean per pair)",
                 ["start-up (to 1st step)", "between trials (sum)", "inside trials (sum)", "after last step", "total extra"],
                 [[f["extra"]["startup_s"], f["extra"]["between_trials_s"], f["extra"]["inside_trials_s"], f["extra"]["tail_s"], f["extra"]["total_s"]]])
    common.table("Targets", ["figure", "measured", "target", ""], [
        ["wall (b)/(a)", f["ratio"], f"<= {TARGET_RATIO}", common.verdict(f["ratio"] <= TARGET_RATIO)],
        ["command start -> first training step (b)", f["first_step_b_s"], f"<= {TARGET_FIRST_STEP_S} s", common.verdict(f["first_step_b_s"] <= TARGET_FIRST_STEP_S)],
        ["scheduling overhead per trial (b)", f["per_trial_overhead_s"], f"<= {TARGET_PER_TRIAL_S} s", common.verdict(f["per_trial_overhead_s"] <= TARGET_PER_TRIAL_S)],
    ])
    plot_path = plot(pairs, bench.out / f"{bench.stem}.png", model_label, trials, steps)
    same = all(_close(p["scores"]["plain"], p["scores"]["sweep"]) for p in pairs)
    print(f"same training on both sides (final eval spearman_cosine equal to 3 decimals): {common.verdict(same)}")
    bench.write({
        "setup": {"model": model_label, "trials": trials, "steps": steps, "evaluations": evals, "eval_steps": eval_steps,
                  "repeats": repeats, "threads": cores, "cores": os.cpu_count(), "train_pairs": n_train, "eval_pairs": n_eval, "loss": LOSS, **HYPER},
        "targets": {"ratio": TARGET_RATIO, "first_step_s": TARGET_FIRST_STEP_S, "per_trial_overhead_s": TARGET_PER_TRIAL_S},
        "met": {"ratio": f["ratio"] <= TARGET_RATIO, "first_step": f["first_step_b_s"] <= TARGET_FIRST_STEP_S,
                "per_trial": f["per_trial_overhead_s"] <= TARGET_PER_TRIAL_S},
        "same_scores": same,
        **figures, "plot": plot_path,
        "pairs": pairs,
    })
    bench.close()


def plot(pairs: list[dict], path: Path, model_label: str, trials: int, steps: int) -> str:
    """Per pair, (a) and (b) as stacked bars: start-up, trials (first to last step), between trials, tail."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.9 * len(pairs)), dpi=120)
    parts = [("start -> 1st step", "tab:red"), ("inside trials", "tab:blue"), ("between trials", "tab:orange"), ("after last step", "tab:gray")]
    labels, y = [], 0
    for i, pair in enumerate(pairs, 1):
        for side, name in (("a", "plain"), ("b", "stune")):
            d = pair[side]
            values = [d["first_step_s"], sum(d["inside_trials_s"]), sum(d["between_trials_s"]), d["tail_s"]]
            left = 0.0
            for (label, color), v in zip(parts, values):
                ax.barh(y, v, left=left, color=color, label=label if y == 0 else None)
                left += v
            ax.text(left + 2, y, f"{d['wall_s']:.0f} s", va="center", fontsize=8)
            labels.append(f"pair {i} {name}")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"{trials} fixed trials x {steps} steps, {model_label}: plain loop vs stune sweep", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    return common.save_figure(fig, path)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(sorted(a), sorted(b)))


def sweep_scores(run: Path) -> list[float]:
    from tune.trainable import OBJECTIVE

    scores = []
    for result in sorted(run.glob("trial_*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        last = [r for r in lines if OBJECTIVE in r]
        if last:
            scores.append(last[-1][OBJECTIVE])
    return scores


def side(start: float, end: float, marks_path: Path) -> dict:
    marks = common.read_marks(marks_path)
    runs = [r for r in common.trainings(marks) if "first_step" in r and "last_step_end" in r]
    gaps = [runs[i + 1]["first_step"] - runs[i]["last_step_end"] for i in range(len(runs) - 1)]
    return {
        "wall_s": round(end - start, 2),
        "first_step_s": round(runs[0]["first_step"] - start, 2) if runs else None,
        "between_trials_s": [round(g, 2) for g in gaps],
        "inside_trials_s": [round(r["last_step_end"] - r["first_step"], 2) for r in runs],
        "eval_s": [round(r["eval_s"], 2) for r in runs],
        "save_s": [round(r["save_s"], 2) for r in runs],
        "report_s": [round(r["report_s"], 2) for r in runs],  # stune: ray.tune.report (checkpoint persisted)
        "keepbest_s": [round(r["keepbest_s"], 2) for r in runs],  # stune: best model copied aside in the trial
        "steps": [r["steps"] for r in runs],
        "tail_s": round(end - runs[-1]["last_step_end"], 2) if runs else None,
        "processes": len({pid for _, pid, _ in marks}),
    }


def analyse(a0, a1, marks_a, b0, b1, marks_b, trials) -> dict:
    a, b = side(a0, a1, marks_a), side(b0, b1, marks_b)
    if len(a["inside_trials_s"]) != trials or len(b["inside_trials_s"]) != trials:
        raise SystemExit(f"expected {trials} trainings on each side, saw {len(a['inside_trials_s'])} and {len(b['inside_trials_s'])} "
                         "(bench/hooks not active?)")
    extra = breakdown(a, b)
    return {"a": a, "b": b, "ratio": round(b["wall_s"] / a["wall_s"], 4), "extra": extra,
            "per_trial_overhead_s": per_trial(extra, trials)}


def per_trial(extra: dict, trials: int) -> float:
    """(b)'s extra time between and inside trials, per trial; start-up before the first step and
    the tail after the last step (Ray shutdown, summary) are reported on their own."""
    return round((extra["between_trials_s"] + extra["inside_trials_s"]) / trials, 2)


def breakdown(a: dict, b: dict) -> dict:
    extra = {
        "startup_s": b["first_step_s"] - a["first_step_s"],
        "between_trials_s": sum(b["between_trials_s"]) - sum(a["between_trials_s"]),
        "inside_trials_s": sum(b["inside_trials_s"]) - sum(a["inside_trials_s"]),
        "tail_s": b["tail_s"] - a["tail_s"],
        "total_s": b["wall_s"] - a["wall_s"],
    }
    return {k: round(v, 2) for k, v in extra.items()}


def summarise(pairs: list[dict], trials: int) -> dict:
    wall_a = sum(p["a"]["wall_s"] for p in pairs)
    wall_b = sum(p["b"]["wall_s"] for p in pairs)
    mean = lambda key, s: statistics.mean(p[s][key] for p in pairs)  # noqa: E731
    extra = {k: round(statistics.mean(p["extra"][k] for p in pairs), 2) for k in pairs[0]["extra"]}
    return {
        "wall_a_s": round(wall_a, 2), "wall_b_s": round(wall_b, 2), "ratio": round(wall_b / wall_a, 4),
        "ratio_per_pair": [p["ratio"] for p in pairs],
        "first_step_a_s": round(mean("first_step_s", "a"), 2), "first_step_b_s": round(mean("first_step_s", "b"), 2),
        "per_trial_overhead_s": per_trial(extra, trials),
        "extra": extra,
    }


if __name__ == "__main__":
    main()
