"""``stune sweep`` / ``stune export`` on real Ray (in-process, loopback only) with the tiny model."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from sentence_transformers import SentenceTransformer

from cli import assert_user_error, run_stune
from trainers.config import parse_config
from tune.config import SweepConfig
from tune.trainable import OBJECTIVE

LOSSES = ["CosineSimilarityLoss", "TripletLoss", "MultipleNegativesRankingLoss", "ContrastiveLoss"]


def sweep_config(model, data, **extra):
    raw = {
        "model": model, "data": data, "max_steps": 12, "trials": 8, "max_concurrent_trials": 2, "seed": 3,
        "search": {"losses": LOSSES, "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                   "per_device_train_batch_size": [8, 16]},
    }
    raw.update(extra)
    return raw


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("checkpoint_*") if p.is_dir()]


@pytest.fixture(scope="module")
def finished_sweep(tiny_model, scored_data, tmp_path_factory):
    from tune.engine import run_sweep

    run_dir = tmp_path_factory.mktemp("sweeps") / "run"
    # random: proposals that do not depend on which trial finished first (TPE + constant liar does)
    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, searcher="random"))
    disk_samples = []

    def watch_disk(kind, row, recorder):  # sampled while the sweep runs
        running = sum(1 for r in recorder.rows.values() if r["status"] == "running")
        disk_samples.append((len(checkpoint_dirs(run_dir)), running))

    # Where trials would unpack a model shipped through Ray's object store (tune/trainable.py);
    # the Ray workers started by run_sweep inherit this process's environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STUNE_CACHE", str(run_dir.parent / "model-cache"))
        summary = run_sweep(config, str(run_dir), on_event=watch_disk)
    return run_dir, summary, disk_samples


def read_trials(run_dir):
    import csv

    with open(run_dir / "trials.csv") as fh:
        return list(csv.DictReader(fh))


def test_sweep_searches_losses_and_keeps_only_sampled_params(finished_sweep):
    run_dir, summary, _ = finished_sweep
    trials = read_trials(run_dir)
    assert len(trials) == 8
    assert len({t["loss"] for t in trials}) >= 3
    own = {"TripletLoss": {"margin", "distance"}, "MultipleNegativesRankingLoss": {"scale"},
           "ContrastiveLoss": {"margin", "distance"}, "CosineSimilarityLoss": set()}
    for t in trials:
        present = {k for k in ("margin", "distance", "scale") if t[k] != ""}
        assert present == own[t["loss"]], t
        assert t["status"] in ("completed", "stopped_early")
        assert 1e-4 <= float(t["learning_rate"]) <= 1e-2
    assert summary["counts"]["completed"] + summary["counts"]["stopped_early"] == 8


def test_asha_stops_some_trials_early(finished_sweep):
    run_dir, summary, _ = finished_sweep
    stopped = [t for t in read_trials(run_dir) if t["status"] == "stopped_early"]
    assert stopped and summary["counts"]["stopped_early"] == len(stopped)
    assert all(int(t["steps"]) < int(t["total_steps"]) for t in stopped)


def test_asha_waits_for_half_of_a_trials_evaluations_unless_told():
    """The default grace period: a trial is not stopped before half its evaluations (at least one);
    an explicit asha.grace_period wins, capped at the evaluations a trial has."""
    grace = [SweepConfig.model_validate({"evaluations_per_trial": n}).grace_period for n in (1, 2, 3, 4, 6)]
    assert grace == [1, 1, 1, 2, 3]
    assert SweepConfig.model_validate({"evaluations_per_trial": 4, "asha": {"grace_period": 1}}).grace_period == 1
    assert SweepConfig.model_validate({"evaluations_per_trial": 2, "asha": {"grace_period": 5}}).grace_period == 2


def test_best_is_best_at_any_step_across_trials(finished_sweep):
    run_dir, summary, _ = finished_sweep
    trials = read_trials(run_dir)
    best = summary["best"]
    assert best[OBJECTIVE] == pytest.approx(max(float(t[OBJECTIVE]) for t in trials), abs=1e-6)
    # Ray's own per-trial history agrees: the best is the max over every report of every trial.
    reported = []
    for result_file in run_dir.glob("trial_*/result.json"):
        reported += [json.loads(line)[OBJECTIVE] for line in result_file.read_text().splitlines() if line.strip()]
    assert best[OBJECTIVE] == pytest.approx(max(reported), abs=1e-9)
    assert summary["baseline"][OBJECTIVE] < 1
    assert summary["beats_baseline"] == (best[OBJECTIVE] > summary["baseline"][OBJECTIVE])
    # How sure the best score is: the eval file's pair count and an interval around the score.
    config = json.loads((run_dir / "sweep.json").read_text())["config"]
    assert summary["eval_pairs"] == len(Path(config["data"]["eval"]).read_text().splitlines()) - 1
    low, high = summary["best_interval_95"]
    assert low < best[OBJECTIVE] < high and high - low > 0.1  # 40 pairs: wide


def test_trials_on_this_machines_private_ray_read_the_model_folder_in_place(finished_sweep):
    """No copy of the model goes through Ray's object store or into a per-node cache when every
    node is this machine (a loopback-only Ray); tests/test_cluster_sweep.py covers the shipped copy."""
    run_dir, summary, _ = finished_sweep
    assert summary["counts"]["errored"] == 0 and summary["best"] is not None  # the trials loaded it
    assert not (run_dir.parent / "model-cache").exists()


def test_checkpoint_disk_stays_bounded(finished_sweep):
    run_dir, _, samples = finished_sweep
    assert samples
    # One checkpoint per running trial; two for a moment while Ray swaps in a newer one.
    assert max(n for n, _ in samples) <= 2 * 2
    assert all(n <= 2 * running for n, running in samples if running)
    assert checkpoint_dirs(run_dir) == []  # finished trials keep none: best/ holds the winner
    assert (run_dir / "best" / "model.safetensors").exists()
    assert not (run_dir / "best" / "optimizer.pt").exists()


def test_export_matches_summary_and_writes_a_card(finished_sweep, tmp_path):
    from sentence_transformers import SentenceTransformer

    run_dir, summary, _ = finished_sweep
    out = tmp_path / "model"
    proc = run_stune("export", run_dir, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from trainers.data import read_split
    from trainers.evaluation import evaluate

    config = json.loads((run_dir / "sweep.json").read_text())["config"]
    score = evaluate(SentenceTransformer(str(out)), read_split(config["data"]["eval"]), "eval")[OBJECTIVE]
    assert score == pytest.approx(summary["best"][OBJECTIVE], abs=1e-4)
    card = (out / "README.md").read_text()
    assert summary["best"]["config"]["loss"] in card
    assert "test (held out" in card and "Top trials" in card
    # the winning settings as they were sampled (a learning rate of 6.8e-05 must not read 0.0001)
    assert f"learning_rate={summary['best']['config']['learning_rate']:.4g}" in card, card
    # a model exported with --force although the base model scored higher says so
    assert ("No trial beat the untuned base model" in card) == (not summary["beats_baseline"]), card
    from tune.exporter import model_card

    sweep_doc = json.loads((run_dir / "sweep.json").read_text())
    forced = model_card(SweepConfig.model_validate(config), {**sweep_doc, "baseline": {OBJECTIVE: 1.0}}, summary["best"],
                        {"eval": {OBJECTIVE: score}}, read_trials(run_dir), summary)
    assert "No trial beat the untuned base model on eval" in forced and "`--force`" in forced
    # the data line: the user's own files by path; stune's embedded set by name, with the attribution
    # its CC BY 4.0 licence asks of whoever shares a model trained on it, and no path of this machine
    assert config["data"]["train"] in card and "CC BY" not in card
    embedded_config = SweepConfig.model_validate({**config, "data": {}})
    embedded = model_card(embedded_config, sweep_doc, summary["best"], {"eval": {OBJECTIVE: score}}, read_trials(run_dir), summary)
    data_line = next(line for line in embedded.splitlines() if line.startswith("- Data:"))
    assert "O*NET" in data_line and "ESCO" in data_line and "CC BY 4.0" in data_line, data_line
    assert "`train.csv`" in data_line and embedded_config.data.train not in embedded, data_line
    # An existing folder is never overwritten without --force.
    assert_user_error(run_stune("export", run_dir, "--out", out), "--out", "--force")


def test_exported_recipe_trains_the_winner_again(finished_sweep, tmp_path):
    """The export's stune_train.yaml is the winning trial as a `stune train` config: run from
    another folder, it reaches the winner's eval score at the winner's step."""
    run_dir, summary, _ = finished_sweep
    best = summary["best"]
    out = tmp_path / "model"
    proc = run_stune("export", run_dir, "--out", out, "--force")
    assert proc.returncode == 0 and f"stune train {out / 'stune_train.yaml'} --out DIR" in proc.stdout, proc.stdout
    recipe = yaml.safe_load((out / "stune_train.yaml").read_text())
    assert recipe["loss"]["name"] == best["config"]["loss"]
    assert recipe["learning_rate"] == best["config"]["learning_rate"]
    assert recipe["eval_steps"] == 4 and recipe["max_steps"] == 12  # the trial's 3 evaluations of 12 steps
    assert Path(recipe["model"]).is_absolute() and Path(recipe["data"]["train"]).is_absolute()
    assert "stune train stune_train.yaml" in (out / "README.md").read_text()
    proc = run_stune("train", out / "stune_train.yaml", "--out", tmp_path / "again", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "again" / "metrics.json").read_text())["history"]
    at_best_step = next(h["metrics"] for h in history if h["step"] == best["step"])
    assert at_best_step[OBJECTIVE] == pytest.approx(best[OBJECTIVE], abs=2e-3)
    # a model given to the sweep as a relative path is written out absolute: the recipe lives elsewhere
    from tune.exporter import winner_recipe

    config = json.loads((run_dir / "sweep.json").read_text())["config"]
    model = Path(config["model"])
    with pytest.MonkeyPatch.context() as env:
        env.chdir(model.parent)
        relative = SweepConfig.model_validate({**config, "model": model.name})
        assert winner_recipe(relative, best, read_trials(run_dir))["model"] == str(model.resolve())


def test_a_resumed_sweep_rebuilds_ashas_rungs_from_the_trials_before_it(finished_sweep):
    """Ray restores ASHA with empty rungs; stune replays what the run dir's trials reported, so after
    a --resume a trial that every earlier trial outscored at the first rung is stopped there."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from tune.rundir import RunDir
    from tune.engine import _scheduler, replay_asha_history
    from tune.trainable import BEST_OBJECTIVE

    run_dir, _, _ = finished_sweep
    config = SweepConfig.model_validate(json.loads((run_dir / "sweep.json").read_text())["config"])
    results = RunDir.open(str(run_dir)).trial_results()
    rung = config.grace_period
    first_rung = {tid: next(r[BEST_OBJECTIVE] for r in rs if r.get("training_iteration", 0) >= rung)
                  for tid, rs in results.items() if any(r.get("training_iteration", 0) >= rung for r in rs)}
    assert len(first_rung) == len(read_trials(run_dir)) == 8

    as_restored, replayed = _scheduler(config), _scheduler(config)
    assert replay_asha_history(replayed, RunDir.open(str(run_dir))) == sum(
        1 for rs in results.values() for r in rs if BEST_OBJECTIVE in r)
    recorded = dict(next(values for milestone, values in replayed._brackets[0]._rungs if milestone == rung))
    assert recorded == pytest.approx(first_rung)

    def first_rung_result(scheduler, score):
        trial = SimpleNamespace(trial_id=f"new-{score}")
        scheduler.on_trial_add(None, trial)
        return scheduler.on_trial_result(None, trial, {"training_iteration": rung, BEST_OBJECTIVE: score})

    worst, best = min(first_rung.values()) - 0.1, max(first_rung.values()) + 0.1
    assert first_rung_result(as_restored, worst) == TrialScheduler.CONTINUE  # Ray's restore alone
    assert first_rung_result(replayed, worst) == TrialScheduler.STOP
    assert first_rung_result(replayed, best) == TrialScheduler.CONTINUE


def test_export_scores_the_base_model_when_the_sweep_did_not(finished_sweep, tmp_path):
    """A sweep stopped (Ctrl-C) before its untuned model was scored, and not resumed, still exports."""
    import shutil

    run_dir, summary, _ = finished_sweep
    interrupted = tmp_path / "run"
    shutil.copytree(run_dir, interrupted)
    sweep_doc = json.loads((interrupted / "sweep.json").read_text())
    (interrupted / "sweep.json").write_text(json.dumps({**sweep_doc, "baseline": None}))
    (interrupted / "summary.json").unlink()
    proc = run_stune("export", interrupted, "--out", tmp_path / "model", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (tmp_path / "model" / "README.md").read_text()
    base = f"{summary['baseline'][OBJECTIVE]:.4f}"
    assert f"| eval (used for selection) | {summary['eval_pairs']} | {base} |" in card, card


def test_export_during_a_sweep_exports_the_best_it_names(finished_sweep, tiny_model, tmp_path, monkeypatch):
    """A running sweep swaps in a better best/ (then best.json) at any moment. Here it does so just
    after export has read best.json and loaded the old best/: the export reads again, and its
    model, card and score are all the newer best's."""
    import shutil

    import pyarrow.fs as pafs
    from sentence_transformers import SentenceTransformer

    import trainers.model
    import tune.exporter
    from trainers.data import read_split
    from trainers.evaluation import evaluate
    from tune.rundir import RunDir

    run_dir, summary, _ = finished_sweep
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    newer = tmp_path / "newer"  # another model of the same shape, as a later trial's checkpoint: the untuned one
    shutil.copytree(tiny_model, newer / "model")
    config = json.loads((run / "sweep.json").read_text())["config"]
    newer_score = evaluate(SentenceTransformer(str(newer / "model")), read_split(config["data"]["eval"]), "eval")[OBJECTIVE]
    assert newer_score != pytest.approx(summary["best"][OBJECTIVE], abs=1e-4)
    newer_best = {**summary["best"], "trial_id": "newer000", OBJECTIVE: newer_score, "step": 30}
    real_load, swaps = trainers.model.load_model, []

    def load_then_the_sweep_swaps(path, **kwargs):
        model = real_load(path, **kwargs)
        if not swaps:  # the recorder's own steps: best/ first, then best.json
            rundir = RunDir.open(str(run))
            rundir.replace_dir_from("best", pafs.LocalFileSystem(), str(newer / "model"))
            rundir.write_json("best.json", newer_best)
            swaps.append(path)
        return model

    monkeypatch.setattr(trainers.model, "load_model", load_then_the_sweep_swaps)
    result = tune.exporter.export_best(str(run), tmp_path / "model", force=True)
    assert swaps and result["best"]["trial_id"] == "newer000"
    assert result["scores"]["eval"][OBJECTIVE] == pytest.approx(newer_score, abs=1e-6)
    assert "trial `newer000`" in (tmp_path / "model" / "README.md").read_text()


def test_export_scores_the_rows_the_sweep_selected_on(finished_sweep, tmp_path):
    """With ``data.max_rows``, the export's eval score, and the base model's when export computes
    it, are on the same first rows the sweep saw, not on the whole file."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from trainers.data import read_split
    from trainers.evaluation import evaluate

    run_dir, _, _ = finished_sweep
    limited = tmp_path / "run"
    shutil.copytree(run_dir, limited)
    sweep_doc = json.loads((limited / "sweep.json").read_text())
    config = sweep_doc["config"]
    config["data"]["max_rows"] = 20
    config["data"]["test"] = None
    (limited / "sweep.json").write_text(json.dumps({**sweep_doc, "config": config, "baseline": None}))
    out = tmp_path / "model"
    proc = run_stune("export", limited, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]

    def score(model_path: str, rows: int | None) -> float:
        split = read_split(config["data"]["eval"], seed=config["seed"], max_rows=rows)
        return evaluate(SentenceTransformer(model_path), split, "eval")[OBJECTIVE]

    exported, base = score(str(out), 20), score(config["model"], 20)
    assert exported != pytest.approx(score(str(out), None), abs=1e-4)  # the rows make a difference
    assert f"eval spearman_cosine {exported:.4f}" in proc.stdout, proc.stdout
    card = (out / "README.md").read_text()
    assert f"| eval (used for selection) | 20 | {base:.4f} |" in card
    # without a test split the card has no empty test row and says the eval score is the selection's own
    assert "| test" not in card and "No held-out test split was given" in card, card


def test_a_trial_with_eval_steps_runs_all_its_steps_under_asha(tiny_model, scored_data, tmp_path):
    """ASHA stops a trial at its max_t evaluations: with eval_steps set, that is max_steps / eval_steps
    (it was evaluations_per_trial, so every trial ended at its 3rd of 6 evaluations, 'stopped early')."""
    from tune.engine import run_sweep

    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, trials=1, max_steps=12, eval_steps=2,
                                                    scheduler="asha"))
    assert (config.evaluations, config.grace_period) == (6, 3)
    summary = run_sweep(config, str(tmp_path / "run"))
    (trial,) = read_trials(tmp_path / "run")
    assert (trial["status"], trial["steps"], trial["total_steps"]) == ("completed", "12", "12"), trial
    assert summary["counts"]["completed"] == 1
    # where the steps are the trial's own (epochs), no evaluation count is fixed: ASHA never ends a trial at max_t
    assert SweepConfig.model_validate({"num_train_epochs": 2, "eval_steps": 5}).evaluations is None
    assert SweepConfig.model_validate({"max_steps": 2, "evaluations_per_trial": 5}).evaluations == 2


def searcher_of(config: SweepConfig, run_dir: Path):
    """The searcher a sweep of ``config`` into ``run_dir`` makes (Ray's side left out)."""
    from tune.engine import _searcher
    from tune.rundir import RunDir
    from tune.space import SearchSpace

    return _searcher(config, SearchSpace(config), RunDir.open(str(run_dir)))


def test_sweep_starts_from_the_configs_recipe_and_seed_repeats_the_trials(tiny_model, scored_data, tmp_path):
    from tune.engine import BEST_OBJECTIVE, run_sweep

    recipe = {"loss": {"name": "TripletLoss", "margin": 0.4}, "learning_rate": 1e-3, "per_device_train_batch_size": 16}
    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, trials=3, max_steps=2, seed=11,
                                                    scheduler="none", max_concurrent_trials=1, **recipe))
    run_sweep(config, str(tmp_path / "run"))
    rows = sorted(read_trials(tmp_path / "run"), key=lambda r: int(r["number"]))
    # The first trial is the config's own recipe; the searcher picks what it leaves open.
    first = rows[0]
    assert (first["loss"], float(first["margin"]), float(first["learning_rate"]), first["per_device_train_batch_size"]) \
        == ("TripletLoss", 0.4, 1e-3, "16"), first
    assert first["distance"] != ""
    # The seed repeats the trials: a searcher made again from the config proposes what the sweep ran.
    again = searcher_of(config, tmp_path / "again")
    proposed = []
    for row in rows:
        params = again.suggest(row["trial_id"])
        again.on_trial_complete(row["trial_id"], {BEST_OBJECTIVE: float(row[OBJECTIVE])})
        proposed.append((params["loss"], params["learning_rate"], params["per_device_train_batch_size"]))
    ran = [(r["loss"], float(r["learning_rate"]), int(r["per_device_train_batch_size"])) for r in rows]
    assert [(loss, pytest.approx(lr, rel=1e-3), batch) for loss, lr, batch in proposed] == ran


@pytest.mark.parametrize("searcher", ["cmaes", "gp"])
def test_every_searcher_samples_the_conditional_space(searcher, tiny_model, scored_data, tmp_path, capfd):
    """Past their startup trials these samplers import packages of their own (cmaes, greenlet, torch):
    a missing one used to fail the sweep at its first modelled trial. The searcher as a sweep
    builds it proposes and learns six trials (two random), each with only its loss's own
    parameters, quietly: a loss's own parameters are sampled apart from the others by design, and
    Optuna's warning about that (three lines a trial) is not shown."""
    import math

    from tune.engine import BEST_OBJECTIVE

    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, searcher=searcher, trials=6, startup_trials=2))
    made = searcher_of(config, tmp_path / "run")
    proposed = []
    for number in range(6):
        params = made.suggest(f"t{number}")
        own = {name.split(".")[0] for name in params if "." in name}
        assert own <= {params["loss"]}, params
        assert params["loss"] in LOSSES and 1e-4 <= params["learning_rate"] <= 1e-2, params
        made.on_trial_complete(f"t{number}", {BEST_OBJECTIVE: -abs(math.log10(params["learning_rate"]) + 3)})
        proposed.append(params)
    assert len({(p["loss"], p["learning_rate"]) for p in proposed}) > 1
    assert "sampled independently" not in capfd.readouterr().err


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"searcher": "bayes"}, ["searcher"]),
        ({"search": {"losses": []}}, ["search.losses", "is empty"]),
        ({"search": {"learning_rate": {"low": 1e-3, "high": 1e-5}}}, ["learning_rate", "greater than high"]),
        ({"search": {"losses": ["FancyLoss"]}}, ["unknown loss 'FancyLoss'"]),
        ({"search": {"TripletLoss": {"scale": {"low": 1, "high": 2}}}}, ["TripletLoss does not take 'scale'"]),
    ],
)
def test_bad_sweep_config_is_refused_before_ray_starts(change, fragments, tiny_model, scored_data, tmp_path):
    cfg = write(tmp_path / "c.yaml", {**sweep_config(tiny_model, scored_data), **change})
    proc = run_stune("sweep", cfg, "--out", tmp_path / "run", timeout=60)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "run").exists()


def test_python_api_sweeps_and_exports(tiny_model, scored_data, tmp_path, monkeypatch, capsys):
    import os

    from sentence_transformers import SentenceTransformer

    import tune.engine  # noqa: F401  (what the CLI and other code import first must not shadow the API)
    import tune.exporter  # noqa: F401
    from tune import export, sweep

    # a notebook in its own folder, with paths relative to it
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    monkeypatch.chdir(notebook)
    relative = {split: os.path.relpath(path, notebook) for split, path in scored_data.items()}
    summary = sweep(sweep_config(os.path.relpath(tiny_model, notebook), relative, trials=2, max_steps=4), out="run")
    run = notebook / "run"
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["counts"]["completed"] + summary["counts"]["stopped_early"] == 2
    assert capsys.readouterr().err.count("[1/2] trial ") == 1  # a line per finished trial, as the CLI prints
    assert json.loads((run / "sweep.json").read_text())["config"]["data"]["train"] == scored_data["train"]
    monkeypatch.chdir(tmp_path)  # the run dir works from anywhere
    result = export(str(run), str(tmp_path / "model"), force=True)
    assert result["scores"]["eval"][OBJECTIVE] == pytest.approx(summary["best"][OBJECTIVE], abs=1e-4)
    assert SentenceTransformer(str(tmp_path / "model")).encode(["nurse"]).shape == (1, 32)
    assert (tmp_path / "model" / "stune_train.yaml").exists()


def test_one_data_file_sweeps_and_exports_with_eval_and_test_held_out(tiny_model, scored_data, tmp_path):
    # The common case of one labelled file: `--data FILE` holds out 10 % as eval and 10 % as test.
    from trainers.data import load_splits
    from trainers.evaluation import evaluate

    rows = [line for split in ("train", "eval", "test") for line in Path(scored_data[split]).read_text().splitlines()[1:]]
    (tmp_path / "all.csv").write_text("\n".join(["sentence1,sentence2,score", *rows]) + "\n")
    cfg = write(tmp_path / "c.yaml", {"model": tiny_model, "max_steps": 4, "trials": 1, "search": {"losses": ["CoSENTLoss"]}})
    proc = run_stune("sweep", cfg, "--data", tmp_path / "all.csv", "--out", tmp_path / "run", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holding out 10% of all.csv as eval and 10% as test" in proc.stderr, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = SweepConfig.model_validate(json.loads((tmp_path / "run" / "sweep.json").read_text())["config"])
    assert (config.data.train, config.data.eval, config.data.test) == (str(tmp_path / "all.csv"), 0.1, 0.1)
    splits = load_splits(config)
    assert len(splits.train.pairs) + len(splits.eval.pairs) + len(splits.test.pairs) == len(rows)
    # export scores the rows the sweep selected on, and the held-out test rows no trial saw
    exported = run_stune("export", tmp_path / "run", "--out", tmp_path / "model", "--force")
    assert exported.returncode == 0, exported.stderr[-3000:]
    model = SentenceTransformer(str(tmp_path / "model"))
    assert evaluate(model, splits.eval, "eval")[OBJECTIVE] == pytest.approx(summary["best"][OBJECTIVE], abs=1e-4)
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"| test (held out, scored at export) | {len(splits.test.pairs)} |" in card, card
    assert "eval 10%, test 10% of train, held out" in card, card
    assert yaml.safe_load((tmp_path / "model" / "stune_train.yaml").read_text())["data"] == {
        "train": str(tmp_path / "all.csv"), "eval": 0.1, "test": 0.1}


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_model, scored_data, tmp_path):
    raw = {**sweep_config(tiny_model, scored_data), "time_budget": "5m", "gradient_cache_mini_batch_size": 8}
    raw["search"]["losses"] = [*raw["search"]["losses"], "CachedMultipleNegativesRankingLoss"]
    cfg = write(tmp_path / "c.yaml", raw)
    proc = run_stune("sweep", cfg, "--dry-run", "--trials", "7", "--out", tmp_path / "run", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()
    plan = proc.stdout
    assert "trials:    7, 2 at a time" in plan and "time budget 5m" in plan and "12 steps" in plan, plan
    assert f"eval {scored_data['eval']} (40 pairs)" in plan, plan
    assert "learning_rate: 0.0001 .. 0.01 (log)" in plan and "per_device_train_batch_size: one of 8, 16" in plan, plan
    assert "TripletLoss.margin: 0.05 .. 5 (log)" in plan and "CoSENTLoss" not in plan, plan  # only the searched losses
    assert "CachedMultipleNegativesRankingLoss.mini_batch_size: 32 (fixed)" in plan, plan
    assert "a checkpoint at each; gradient caching: at most 8 texts embedded at once" in plan, plan
    assert "first trial: the config's own recipe: loss=CosineSimilarityLoss" in plan, plan
    assert "baseline:  the first trial scores the untuned model on eval before it trains" in plan, plan
    # what would stop the real sweep stops the plan: a run dir in the way, a model that is not there
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("mine")
    assert_user_error(run_stune("sweep", cfg, "--dry-run", "--out", tmp_path / "run"), "--out", "--force")
    assert "exists: --force empties it" in run_stune("sweep", cfg, "--dry-run", "--out", tmp_path / "run", "--force").stdout
    assert (tmp_path / "run" / "mine.txt").read_text() == "mine"
    assert_user_error(run_stune("sweep", cfg, "--dry-run", "--warm-start-from", tmp_path / "run", "--out", tmp_path / "run", "--force"),
                      "--out", "holds --warm-start-from")
    assert_user_error(run_stune("sweep", cfg, "--dry-run", "--model", tmp_path / "nope"), "model", "not a local folder")
    # a sweep killed before it wrote anything leaves its (released) lock: the run dir is free, not "in use"
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / ".stune-running").write_text("pid 1 on gone, since 2026-01-01 00:00:00")
    proc = run_stune("sweep", cfg, "--dry-run", "--out", tmp_path / "killed", timeout=60)
    assert proc.returncode == 0 and "exists" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert_user_error(run_stune("sweep", cfg, "--dry-run", "--resume", "--out", tmp_path / "run"), "--dry-run", "--resume")


def test_eval_and_test_pairs_training_has_seen_are_warned_of(tiny_model, scored_data, tmp_path):
    # An eval split that repeats train pairs makes the sweep pick the trial that memorised them best.
    raw = sweep_config(tiny_model, scored_data)
    clean = run_stune("sweep", write(tmp_path / "clean.yaml", raw), "--dry-run", "--out", tmp_path / "run", timeout=60)
    assert clean.returncode == 0 and "also in data.train" not in clean.stderr, clean.stderr[-3000:]
    train_rows = Path(scored_data["train"]).read_text().splitlines()
    test_rows = Path(scored_data["test"]).read_text().splitlines()
    swapped = [",".join([b, a, score]) for a, b, score in (row.split(",") for row in train_rows[1:4])]  # order does not matter
    (tmp_path / "test.csv").write_text("\n".join([*test_rows, *swapped]) + "\n")
    leaky = {**raw, "data": {**raw["data"], "eval": scored_data["train"], "test": str(tmp_path / "test.csv")}}
    proc = run_stune("sweep", write(tmp_path / "leaky.yaml", leaky), "--dry-run", "--out", tmp_path / "run", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(train_rows) - 1} of {len(train_rows) - 1} data.eval pairs are also in data.train" in proc.stderr, proc.stderr
    assert f"3 of {len(test_rows) + 2} data.test pairs are also in data.train" in proc.stderr, proc.stderr


def test_resume_and_export_need_a_real_sweep(tiny_model, scored_data, tmp_path):
    (tmp_path / "notasweep").mkdir()
    (tmp_path / "notasweep" / "file.txt").write_text("mine")
    assert_user_error(run_stune("sweep", "--resume", "--out", tmp_path / "notasweep"), "--resume", "not a stune sweep")
    assert (tmp_path / "notasweep" / "file.txt").read_text() == "mine"
    assert_user_error(run_stune("sweep", "--out", tmp_path / "notasweep"), "already exists", "--resume")
    # A sweep whose trials never reached an evaluation: nothing to export.
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "sweep.json").write_text(json.dumps({"config": sweep_config(tiny_model, scored_data), "baseline": {OBJECTIVE: 0.1}}))
    assert_user_error(run_stune("export", run, "--out", tmp_path / "m"), "nothing to export")
    assert not (tmp_path / "m").exists()


def test_a_hub_id_in_the_local_hugging_face_cache_is_a_model(tiny_model, scored_data, tmp_path):
    # A model downloaded before (e.g. by SentenceTransformer("org/name")) is found in the cache by its id,
    # offline; the exported card names it as its base_model and the recipe keeps the id, not this machine's path.
    snapshot = tmp_path / "hub" / "models--acme--tiny-st" / "snapshots" / ("ab" * 20)
    shutil.copytree(tiny_model, snapshot)
    (tmp_path / "hub" / "models--acme--tiny-st" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-st" / "refs" / "main").write_text("ab" * 20)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    raw = {k: v for k, v in sweep_config(None, scored_data, trials=1, max_steps=2).items() if k != "model"}
    cfg = write(tmp_path / "c.yaml", raw)
    proc = run_stune("sweep", cfg, "--model", "acme/tiny-st", "--out", tmp_path / "run", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_stune("export", tmp_path / "run", "--out", tmp_path / "model", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nbase_model: acme/tiny-st\n" in (tmp_path / "model" / "README.md").read_text()
    assert yaml.safe_load((tmp_path / "model" / "stune_train.yaml").read_text())["model"] == "acme/tiny-st"
    assert SentenceTransformer(str(tmp_path / "model")).encode(["nurse"]).shape == (1, 32)
    missing = run_stune("sweep", cfg, "--model", "acme/elsewhere", "--dry-run", env=env)
    assert_user_error(missing, "acme/elsewhere", "Hugging Face cache", "never downloads")
