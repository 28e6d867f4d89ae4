"""How a sweep ends when it cannot go as planned: its time budget runs out, every trial errors, the
model does not load, no node can hold a trial; and the untuned model's score beside it. Real Ray
(in-process or the ``stune`` CLI, loopback only) with the tiny model."""

import time
from pathlib import Path

import pytest
import yaml

from cli import assert_user_error, run_stune
from test_sweep import checkpoint_dirs, read_trials, sweep_config, write
from trainers.config import parse_config
from tune.config import SweepConfig
from tune.trainable import OBJECTIVE


@pytest.mark.parametrize("resources, fragments", [
    ({"gpus_per_trial": 64}, ["gpus_per_trial: 64, but this machine has", "GPU", "lower it", "--address"]),
    ({"cpus_per_trial": 512}, ["cpus_per_trial: 512, but this machine has", "CPU", "lower it"]),
])
def test_trials_no_node_could_run_are_refused_not_left_waiting(resources, fragments, tiny_model, scored_data, tmp_path):
    # Ray Tune would keep such trials pending for ever: on this machine's private Ray nothing more will come.
    cfg = write(tmp_path / "c.yaml", {**sweep_config(tiny_model, scored_data, trials=2, max_steps=2), **resources})
    proc = run_stune("sweep", cfg, "--out", tmp_path / "run", timeout=120)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_sweep_whose_every_trial_errors_fails_and_says_where_to_look(tiny_model, scored_data, tmp_path):
    # a real NaN loss in every trial (as in test_reliability.py)
    cfg = write(tmp_path / "c.yaml", {**sweep_config(tiny_model, scored_data, trials=2, max_steps=4, scheduler="none"),
                                      "search": {"losses": ["CoSENTLoss"], "learning_rate": 1.0, "weight_decay": 1.0e30}})
    proc = run_stune("sweep", cfg, "--out", tmp_path / "run", timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no trial finished an evaluation" in proc.stdout and f"stune report {tmp_path / 'run'}" in proc.stdout
    assert [r["status"] for r in read_trials(tmp_path / "run")] == ["errored", "errored"]


def test_time_budget_ends_the_sweep_and_names_the_trials_it_cut(tiny_model, scored_data, tmp_path):
    """The no-config sweep relies on --time-budget: trials running when it ends are recorded as
    stopped by it (not left 'running'), their checkpoints are cleaned up, and nothing new starts."""
    from tune.engine import run_sweep

    # The budget counts from Ray's start and a trial is only cut once its actor has imported torch:
    # ~12 s here alone, ~24 s beside two busy processes (and never, before workers stopped being
    # reniced to 15), so 40 s leaves room on a loaded CI machine.
    config = parse_config(SweepConfig, sweep_config(tiny_model, scored_data, trials=40, max_steps=50000,
                                                    eval_steps=100, scheduler="none", time_budget="40s"))
    t0 = time.time()
    summary = run_sweep(config, str(tmp_path / "run"))
    assert time.time() - t0 < 150
    rows = read_trials(tmp_path / "run")
    assert summary["counts"]["out_of_time"] >= 1, summary["counts"]
    # never "running" once the sweep is over; trials Ray had queued but not started stay "pending"
    assert {r["status"] for r in rows} <= {"completed", "stopped_early", "out_of_time", "pending"}, rows
    assert len(rows) < 40
    assert checkpoint_dirs(tmp_path / "run") == []
    # study.db (optuna-dashboard): a trial the budget cut is complete with its best score so far,
    # not left running (Ray does not tell the searcher about these trials)
    import optuna

    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    states = {t.user_attrs["trial_id"]: (t.state.name, t.value) for t in study.trials}
    assert "RUNNING" not in {state for state, _ in states.values()}, states
    cut = [r for r in rows if r["status"] == "out_of_time" and r[OBJECTIVE]]
    assert cut, rows
    for row in cut:
        assert states[row["trial_id"]][0] == "COMPLETE"
        assert states[row["trial_id"]][1] == pytest.approx(float(row[OBJECTIVE]), abs=1e-6)


def _broken_copy(model: str, where: Path) -> str:
    """A copy of ``model`` that looks right but does not load: its weights are garbage."""
    import shutil

    shutil.copytree(model, where)
    weights = list(where.rglob("*.safetensors"))
    assert weights
    for path in weights:
        path.write_bytes(b"not weights")
    return str(where)


def test_a_model_that_cannot_load_stops_the_sweep_and_leaves_nothing(tiny_model, scored_data, tmp_path):
    """The base model is scored beside the first trials, not before Ray starts: a model folder
    that looks right but does not load must still end the sweep with one line and exit 2, and
    leave no run dir behind."""
    broken = _broken_copy(tiny_model, tmp_path / "broken")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(sweep_config(broken, scored_data, trials=4, max_steps=4)))
    t0 = time.time()
    proc = run_stune("sweep", cfg, "--out", tmp_path / "run")
    assert_user_error(proc, "model", "could not be loaded")
    assert time.time() - t0 < 120
    assert not (tmp_path / "run").exists()


def test_the_baseline_is_the_first_trials_or_scored_by_the_driver_when_no_trial_brought_it(tiny_model, scored_data):
    from trainers.data import load_splits
    from tune.engine import BackgroundBaseline

    config = SweepConfig.model_validate(sweep_config(tiny_model, scored_data))
    splits = load_splits(config, with_test=False)
    baseline = BackgroundBaseline(config, splits)
    published = []
    baseline.when_done(published.append)
    time.sleep(1)
    assert not published and not baseline.settled(), "scored before it was asked to"
    baseline.start()
    scores = baseline.result()
    assert -1 <= scores[OBJECTIVE] <= 1
    assert published == [scores]
    baseline.offer({OBJECTIVE: 0.5})  # a trial's, after the driver's own: the first stands
    assert baseline.result() == scores and published == [scores]

    offered = BackgroundBaseline(config, splits)  # a trial scored it: the driver scores nothing
    offered.when_done(published.append)
    offered.offer({OBJECTIVE: 0.25, "pearson_cosine": 0.5})
    offered.start()
    offered.wait_if_started()
    assert offered.result() == {OBJECTIVE: 0.25, "pearson_cosine": 0.5} == published[-1] and len(published) == 2


def test_the_sweep_driver_never_loads_torch_and_the_first_trial_scores_the_base_model(tiny_model, scored_data, tmp_path):
    """On a cluster the driver runs on the head node or a laptop: it schedules, it does not load
    the model (~0.6 GB with torch for MiniLM). The first trial scores the untuned model before it
    trains, with the same evaluation the driver would run."""
    import json
    import subprocess
    import sys

    from trainers.data import load_splits
    from trainers.evaluation import evaluate_untuned
    from trainers.model import load_model

    config = sweep_config(tiny_model, scored_data, trials=2, max_steps=4)
    script = (
        "import json, sys; from tune import sweep; "
        "summary = sweep(json.loads(sys.argv[1]), out=sys.argv[2]); "
        "print(json.dumps({'baseline': summary['baseline'], 'loaded': sorted(m for m in ('torch', 'transformers', "
        "'sentence_transformers') if m in sys.modules)}))"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == [], seen
    splits = load_splits(SweepConfig.model_validate(config), with_test=False)
    expected = evaluate_untuned(load_model(tiny_model), splits.eval, "eval", "tiny")
    assert seen["baseline"][OBJECTIVE] == pytest.approx(expected[OBJECTIVE], abs=1e-6)
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["baseline"] == seen["baseline"]
    results = [json.loads(line) for path in (tmp_path / "run").glob("trial_*/result.json") for line in path.read_text().splitlines()]
    assert {r.get("base_" + OBJECTIVE) for r in results} == {None, seen["baseline"][OBJECTIVE]}, "one trial scored it"


@pytest.mark.parametrize("loads", [True, False], ids=["model-loads", "model-broken"])
def test_a_baseline_abandoned_by_a_stopped_sweep_is_neither_published_nor_logged(loads, tiny_model, scored_data, tmp_path, caplog):
    """Ctrl-C (or an error) ends a sweep while its untuned model may still be scored in a
    background thread: nothing of that may be written or logged after it (on CI, a failure logged
    while the process exited came after the resume command, the last line a user should see)."""
    from concurrent.futures import CancelledError

    from trainers.data import load_splits
    from tune.engine import BackgroundBaseline

    model = tiny_model if loads else _broken_copy(tiny_model, tmp_path / "broken")
    config = SweepConfig.model_validate(sweep_config(model, scored_data))
    splits = load_splits(config, with_test=False)
    for abandoned_after_start in (True, False):
        caplog.clear()
        baseline = BackgroundBaseline(config, splits)
        published = []
        baseline.when_done(published.append)
        if abandoned_after_start:  # a Ctrl-C while the model is (most likely) being scored
            baseline.start()
        baseline.abandon()
        seen = (len(published), len(caplog.records))
        baseline.failed(wait=True)
        assert (len(published), len(caplog.records)) == seen, (published, caplog.text)
        if not abandoned_after_start:  # before any trial started: never scored
            with pytest.raises(CancelledError):
                baseline.result()
