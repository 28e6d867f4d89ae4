"""Seeing a sweep after (or while) it runs: ``stune report``, study.db, warm starts, TensorBoard
events and the export's model card, all on one real tiny sweep run through the CLI."""

import contextlib
import json
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli import run_stune
from sweep_runs import TRIALS, read_trials, shared_cli_sweep, sweep_config
from tune.trainable import OBJECTIVE

PNG = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = ["optimization_history", "param_importances", "parallel_coordinate", "spearman_by_loss", "learning_curves", "trial_times"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model, scored_data):
    run_dir, _ = shared_cli_sweep(tmp_path_factory, tiny_model, scored_data)
    return run_dir


@pytest.fixture(scope="module")
def report(swept, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    proc = run_stune("report", swept, "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_plot_names_are_the_reports():
    from tune.report import PLOTS

    assert list(PLOTS) == PLOT_NAMES


def test_report_has_each_plot_as_a_real_png(report):
    out, proc = report
    for name in PLOT_NAMES:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 10_000, (name, len(data))  # a drawn plot, not an empty canvas
    assert "not drawn" not in proc.stderr  # no placeholder on a finished 6-trial sweep


def test_terminal_table_shows_the_best_trial(report, swept):
    _, proc = report
    best = json.loads((swept / "summary.json").read_text())["best"]
    assert "top 6 trials" in proc.stdout
    assert best["trial_id"] in proc.stdout
    assert f"{best[OBJECTIVE]:.4f}" in proc.stdout
    assert "report.html" in proc.stdout
    # one line per trial in a pipe, hyperparameters included (not wrapped to 80 columns)
    row = [line for line in proc.stdout.splitlines() if line.lstrip().startswith(best["trial_id"])]
    assert len(row) == 1 and f"{best[OBJECTIVE]:.4f}" in row[0] and "lr=" in row[0] and "batch=" in row[0], proc.stdout
    # every loss cell is readable: its name, or a short form the line under the table spells out
    for trial in read_trials(swept):
        if trial.get(OBJECTIVE) in (None, ""):
            continue
        cell = next(line.split()[2] for line in proc.stdout.splitlines() if line.lstrip().startswith(trial["trial_id"]))
        assert cell == trial["loss"].removesuffix("Loss") or f"{cell} = {trial['loss']}" in proc.stdout, (cell, proc.stdout)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [value for name, value in attrs if name in ("src", "href", "srcset", "data", "poster", "action") and value]


def test_html_opens_offline_and_references_only_local_files(report, swept):
    out, _ = report
    text = (out / "report.html").read_text()
    parser = _Refs()
    parser.feed(text)
    assert parser.refs, "the report shows its plots"
    for ref in parser.refs:
        if ref.startswith("data:"):
            assert ref.startswith("data:image/png;base64,"), ref[:40]
            continue
        assert "://" not in ref and not ref.startswith("//"), ref  # no CDN, no network
        assert (out / ref).exists(), ref
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "@import" not in text and "url(" not in text
    images = [r for r in parser.refs if r.startswith("data:image/png")]
    assert len(images) == len(PLOT_NAMES)
    best = json.loads((swept / "summary.json").read_text())["best"]
    assert best["trial_id"] in text


def test_study_db_loads_with_optuna_and_holds_every_trial(swept):
    import optuna

    study = optuna.load_study(study_name=swept.name, storage=f"sqlite:///{swept / 'study.db'}")
    trials = read_trials(swept)
    assert len(study.trials) == len(trials) == TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # trials.csv keeps 6 decimals
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(float(r[OBJECTIVE]) for r in trials), abs=1e-6)
    assert {t.params["loss"] for t in study.trials} == {r["loss"] for r in trials}


def test_tensorboard_events_per_trial_hold_spearman(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = read_trials(swept)
    for row in trials:
        folder = swept / f"trial_{row['trial_id']}" / "tensorboard"
        assert list(folder.glob("events.out.tfevents.*")), folder
        events = EventAccumulator(str(folder))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert {"eval/spearman_cosine", "train/loss", "train/learning_rate"} <= set(tags), tags
        scores = events.Scalars("eval/spearman_cosine")
        assert len(scores) >= 1
        assert max(s.value for s in scores) == pytest.approx(float(row[OBJECTIVE]), abs=1e-4)
        if row["status"] == "completed":
            assert [s.step for s in scores][-1] == int(row["total_steps"])


def test_report_works_on_a_running_or_interrupted_sweep(swept, tmp_path):
    """No summary.json yet, trials still running, a result.json cut mid-line: still a full report."""
    from tune.report import write_report

    run = tmp_path / swept.name
    shutil.copytree(swept, run, ignore=shutil.ignore_patterns("best", "report"))
    (run / "summary.json").unlink()
    lines = (run / "trials.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    status, seconds = header.index("status"), header.index("seconds")
    for row in rows[-2:]:
        row[status], row[seconds] = "running", ""
    (run / "trials.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    running = run / f"trial_{rows[-1][0]}" / "result.json"
    running.write_text(running.read_text() + '{"spearman_cosine": 0.4, "st')
    # ... and study.db holds them as running, with no value yet (as the sweep writes them)
    ids = [row[0] for row in rows[-2:]]
    with contextlib.closing(sqlite3.connect(run / "study.db")) as db, db:
        marks = ",".join("?" * len(ids))
        numbers = [n for (n,) in db.execute(
            f"select trial_id from trial_user_attributes where key = 'trial_id' and value_json in ({marks})",
            [json.dumps(i) for i in ids])]
        assert len(numbers) == 2
        db.execute(f"update trials set state = 'RUNNING', datetime_complete = NULL where trial_id in ({','.join('?' * 2)})", numbers)
        db.execute(f"delete from trial_values where trial_id in ({','.join('?' * 2)})", numbers)
    result = write_report(str(run), tmp_path / "out")
    # a running trial counts in the study's plots with its best score so far, from trials.csv
    by_id = {r["trial_id"]: r for r in read_trials(run)}
    shown = {t.user_attrs["trial_id"]: t for t in result["data"].study.trials if t.user_attrs.get("running")}
    assert sorted(shown) == sorted(ids)
    assert all(t.value == pytest.approx(float(by_id[i][OBJECTIVE])) for i, t in shown.items())
    assert result["placeholders"] == {}
    for name in PLOT_NAMES:
        assert (tmp_path / "out" / f"{name}.png").read_bytes().startswith(PNG)
    assert "running or interrupted" in (tmp_path / "out" / "report.html").read_text()
    assert result["data"].counts()["running"] == 2


def test_a_sweep_typed_with_relative_paths_exports_from_any_directory(swept, tmp_path):
    """The sweep ran in its folder with --data data --model <relative>; export runs elsewhere and still
    scores the same eval and test files, and its recipe names them so that it trains from anywhere."""
    import yaml

    export = run_stune("export", swept, "--out", "model", cwd=tmp_path, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    recipe = yaml.safe_load((tmp_path / "model" / "stune_train.yaml").read_text())
    for path in (recipe["model"], *recipe["data"].values()):
        assert Path(path).is_absolute() and Path(path).exists(), recipe
    assert Path(recipe["data"]["eval"]).parent == swept.parent / "my data"


def test_a_sweep_whose_trials_all_errored_says_why_in_report_and_export(swept, tmp_path):
    """The same run dir, rewritten as if every trial had errored (two reasons) and the sweep ended."""
    import csv

    run = tmp_path / swept.name
    shutil.copytree(swept, run, ignore=shutil.ignore_patterns("best", "best.json", "report"))
    with open(run / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    reasons = ["out of memory at per_device_train_batch_size=64; lower it", "loss is nan at step 3; lower learning_rate"]
    for i, row in enumerate(rows):
        row.update(status="errored", spearman_cosine="", best_step="", error=reasons[i % 2])
    with open(run / "trials.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(best=None, counts={**summary["counts"], "completed": 0, "stopped_early": 0, "errored": len(rows)})
    (run / "summary.json").write_text(json.dumps(summary))

    proc = run_stune("report", run, "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(rows)} trial(s) errored:" in proc.stdout
    for reason in reasons:
        assert f"x {reason}" in proc.stdout
    assert "no trial has finished an evaluation\n" in proc.stdout  # not "yet": the sweep is over
    export = run_stune("export", run, "--out", tmp_path / "model")
    assert export.returncode == 2 and f"the sweep ended with no trial evaluated ({len(rows)} errored)" in export.stderr
    assert "stune report" in export.stderr and not (tmp_path / "model").exists()


def test_warm_start_seeds_the_new_searcher_with_the_old_trials(swept, tiny_model, scored_data, tmp_path):
    import optuna

    from trainers.config import parse_config
    from tune.config import SweepConfig
    from tune.rundir import RunDir
    from tune.space import SearchSpace
    from tune.study import warm_start_trials
    from tune.engine import _searcher

    old = optuna.load_study(study_name=swept.name, storage=f"sqlite:///{swept / 'study.db'}")
    old_trials = sorted((t.value, sorted(t.params.items())) for t in old.trials)

    # The searcher object a warm-started sweep builds: its Optuna study holds the old trials.
    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, trials=2))
    space = SearchSpace(config)
    seeds, skipped = warm_start_trials(str(swept), space, config)
    searcher = _searcher(config, space, RunDir.open(str(tmp_path / "unit")), seed_trials=seeds)
    assert skipped == 0
    assert sorted((t.value, sorted(t.params.items())) for t in searcher._ot_study.trials) == old_trials

    # End to end (in-process: no second interpreter start-up): a new 1-trial, 2-step sweep
    # started from the old one; its study.db holds both.
    from tune.engine import run_sweep

    run = tmp_path / "warm"
    run_sweep(parse_config(SweepConfig, sweep_config(tiny_model, scored_data, trials=1, max_steps=2)), str(run), warm_start_from=str(swept))
    new = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    seeded = [t for t in new.trials if t.user_attrs.get("warm_start_from") == str(swept)]
    own = [t for t in new.trials if "warm_start_from" not in t.user_attrs]
    assert sorted((t.value, sorted(t.params.items())) for t in seeded) == old_trials
    assert max(t.number for t in seeded) < min(t.number for t in own)  # there before the first proposal
    assert len(own) == len(read_trials(run)) == 1
    # each trial of study.db is named by its trials.csv id; a seed by the old sweep's, apart, so a
    # --resume of the new sweep does not take seeds for its own trials
    assert own[0].user_attrs["trial_id"] == read_trials(run)[0]["trial_id"]
    assert {t.user_attrs.get("warm_start_trial_id") for t in seeded} == {r["trial_id"] for r in read_trials(swept)}
    assert not any("trial_id" in t.user_attrs for t in seeded)
    assert json.loads((run / "sweep.json").read_text())["warm_start_from"] == str(swept)


def test_export_card_embeds_the_key_plots_and_top_trials(swept, tmp_path):
    from tune.exporter import export_best
    from tune.report import KEY_PLOTS, PLOTS

    out = tmp_path / "model"
    export_best(str(swept), out, force=True)
    card = (out / "README.md").read_text()
    assert "## Top trials" in card
    for row in read_trials(swept):
        assert row["trial_id"] in card
    for name in KEY_PLOTS:
        path = f"stune_report/{name}.png"
        assert f"![{PLOTS[name]}]({path})" in card
        assert (out / path).read_bytes().startswith(PNG)


def test_report_replaces_its_own_files_and_a_users_only_with_force(swept, tmp_path):
    from tune.report import ReportError, write_report

    out = tmp_path / "out"
    write_report(str(swept), out)
    write_report(str(swept), out)  # an earlier report's files: replaced without asking
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "overview.png").write_bytes(b"my own picture")
    with pytest.raises(ReportError, match="already holds overview.png"):
        write_report(str(swept), mine)
    assert (mine / "overview.png").read_bytes() == b"my own picture" and not (mine / "report.html").exists()
    write_report(str(swept), mine, force=True)
    assert (mine / "overview.png").read_bytes().startswith(PNG)
