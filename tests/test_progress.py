"""What ``stune sweep`` shows while it runs: one plain line per finished trial when stderr is
not a terminal (checked on a real CLI sweep), and the live view's content."""

import io
import json
import re

import pytest
from rich.console import Console

from sweep_runs import TRIALS, read_trials, shared_cli_sweep
from tune.progress import LiveProgress, PlainProgress, SweepProgress, format_duration, progress_for
from tune.trainable import OBJECTIVE

LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] trial (\w+) (completed|stopped early|errored)")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model, scored_data):
    return shared_cli_sweep(tmp_path_factory, tiny_model, scored_data)


def test_non_tty_sweep_prints_one_line_per_finished_trial(swept):
    run_dir, proc = swept
    lines = [LINE.match(line) for line in proc.stderr.splitlines()]
    lines = [m for m in lines if m]
    trials = read_trials(run_dir)
    assert len(lines) == len(trials) == TRIALS, proc.stderr[-3000:]
    assert sorted(m.group(3) for m in lines) == sorted(t["trial_id"] for t in trials)  # each trial once
    assert [int(m.group(1)) for m in lines] == list(range(1, TRIALS + 1))  # counts up to the budget
    assert {int(m.group(2)) for m in lines} == {TRIALS}
    status = {t["trial_id"]: t["status"].replace("_", " ") for t in trials}
    assert all(status[m.group(3)] == m.group(4) for m in lines)


def test_sweep_warns_of_a_small_eval_split_and_prints_the_best_scores_interval(swept):
    run_dir, proc = swept
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_pairs"] == 40
    assert "warning: data.eval has 40 pairs (under 100)" in proc.stderr, proc.stderr[-3000:]
    low, high = summary["best_interval_95"]
    assert f"95 % interval {low:.2f}–{high:.2f} on 40 pairs" in proc.stdout, proc.stdout


def test_sweep_summary_is_one_line_per_fact_and_its_export_command_fits_the_outcome(swept, capsys):
    from tune.cli import _print_sweep_summary

    run_dir, proc = swept
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]
    # not wrapped at 80 columns in a log: the score and the trial it came from are on one line
    best_lines = [line for line in proc.stdout.splitlines() if line.startswith(f"best eval {OBJECTIVE}")]
    assert len(best_lines) == 1, proc.stdout
    assert f"{best[OBJECTIVE]:.4f}" in best_lines[0] and f"trial {best['trial_id']} step {best['step']}" in best_lines[0]

    def export_hint(beats_baseline: bool) -> str:  # the run dir as the user typed it ("my run", in its folder), quoted
        if beats_baseline:
            return "export it with: stune export 'my run' --out <folder>"
        return "export it anyway with: stune export 'my run' --out <folder> --force"  # export refuses without it

    assert proc.stdout.splitlines()[-1] == export_hint(summary["beats_baseline"]), proc.stdout
    _print_sweep_summary({**summary, "beats_baseline": not summary["beats_baseline"]})  # the other outcome
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == export_hint(not summary["beats_baseline"]), printed
    assert ("no trial beat the untuned base model" in printed[-2]) == summary["beats_baseline"], printed


def test_ray_tables_stay_away_without_verbose(swept):
    _, proc = swept
    output = proc.stdout + proc.stderr
    for ray_output in ("Configuration for experiment", "View detailed results here", "Trial status:", "Number of trials", "INFO tune.py"):
        assert ray_output not in output


class FakeRecorder:
    def __init__(self, planned=4, run_dir=None):
        self.planned_trials = planned
        self.run_dir = run_dir
        self.rows = {}
        self.best = None

    def counts(self):
        counts = {s: 0 for s in ("completed", "stopped_early", "errored", "running", "pending")}
        for row in self.rows.values():
            counts[row["status"]] += 1
        return counts

    def start(self, display, trial, loss="TripletLoss", **params):
        self.rows[trial] = {"trial_id": trial, "status": "running", "loss": loss, **params}
        display("start", self.rows[trial], self)

    def result(self, display, trial, step, score):
        row = self.rows[trial]
        row.update(steps=step, total_steps=12)
        if not row.get(OBJECTIVE) or score > row[OBJECTIVE]:
            row[OBJECTIVE], row["best_step"] = score, step
        if self.best is None or score > self.best[OBJECTIVE]:
            config = {k: v for k, v in row.items() if k not in ("trial_id", "status", OBJECTIVE, "steps", "total_steps", "best_step")}
            self.best = {"trial_id": trial, OBJECTIVE: score, "step": step, "config": config}
        display("result", {**row, "last_score": score}, self)

    def finish(self, display, trial, status, seconds=10.0, error=None):
        self.rows[trial].update(status=status, seconds=seconds, error=error)
        display("done", self.rows[trial], self)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_progress_writes_exactly_one_line_per_finished_trial():
    out, clock, rec = io.StringIO(), Clock(), FakeRecorder(planned=4)
    display = PlainProgress(4, stream=out, clock=clock)
    clock.now += 10  # start-up (Ray, baseline) before the first trial does not count in the estimate
    rec.start(display, "a1", learning_rate=3e-4, per_device_train_batch_size=8, margin=0.5)
    rec.start(display, "b2", loss="MultipleNegativesRankingLoss", learning_rate=1e-3, scale=20.0)
    rec.result(display, "a1", 3, 0.41)
    rec.result(display, "b2", 3, 0.38)
    assert out.getvalue() == ""  # nothing until a trial ends
    clock.now += 20
    rec.finish(display, "b2", "stopped_early", seconds=12.0)
    rec.result(display, "a1", 6, 0.43)
    clock.now += 20
    rec.finish(display, "a1", "completed")
    rec.start(display, "c3")
    clock.now += 5
    rec.finish(display, "c3", "errored", error="TrainingError: training loss became nan")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[1/4] trial b2 stopped early: MultipleNegativesRankingLoss lr=1.0e-03 scale=20")
    assert "spearman_cosine 0.3800 (step 3), 3/12 steps, 12 s" in lines[0]
    assert "best 0.4100" in lines[0] and "0:30 elapsed" in lines[0]
    assert "~1:00 left" in lines[0]  # 1 trial in the 20 s since the first start, 3 left
    assert lines[1].startswith("[2/4] trial a1 completed: TripletLoss lr=3.0e-04 batch=8 margin=0.5")
    assert "best 0.4300" in lines[1]
    assert lines[2].startswith("[3/4] trial c3 errored (TrainingError: training loss became nan)")


def test_remaining_time_uses_the_pace_since_the_first_trial_and_the_time_budget():
    clock, rec = Clock(), FakeRecorder(planned=10)
    display = SweepProgress(10, clock=clock, time_budget_s=200)
    assert display.remaining() == 200  # nothing finished: only the budget is known
    clock.now += 50  # start-up
    rec.start(display, "a")
    clock.now += 20
    rec.finish(display, "a", "completed")
    assert display.remaining() == pytest.approx(min(20 * 9, 200 - 70))
    display.time_budget_s = None
    assert display.remaining() == pytest.approx(20 * 9)
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05" and format_duration(None) == "–"


def test_live_view_shows_counts_best_and_running_trials():
    clock, rec = Clock(), FakeRecorder(planned=6)
    console = Console(record=True, width=120, file=io.StringIO())
    display = LiveProgress(6, console=console, clock=clock)
    rec.start(display, "aaaa1111", learning_rate=3e-4, margin=1.13)
    rec.start(display, "bbbb2222", loss="MultipleNegativesRankingLoss")
    rec.start(display, "cccc3333", loss="CosineSimilarityLoss")
    clock.now += 30
    rec.result(display, "aaaa1111", 3, 0.4123)
    rec.result(display, "bbbb2222", 6, 0.3999)
    rec.finish(display, "bbbb2222", "stopped_early")
    rec.finish(display, "cccc3333", "errored", error="boom")
    console.print(display)
    text = console.export_text()
    assert "2/6 trials done" in text and "elapsed 0:30" in text
    assert "0 completed · 1 stopped early · 1 errored · 1 running" in text
    assert "best spearman_cosine 0.4123" in text and "TripletLoss lr=3.0e-04 margin=1.13" in text
    assert re.search(r"aaaa1111\s+TripletLoss\s+3/12\s+0\.4123", text)  # a running trial: step, last score
    assert "bbbb2222" not in text.split("running")[-1]  # finished trials leave the running table


def test_progress_for_picks_live_on_a_terminal_plain_otherwise_none_with_verbose():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    with progress_for(3, verbose=True) as display:
        assert display is None
    with progress_for(3, stream=io.StringIO()) as display:
        assert isinstance(display, PlainProgress)
    with progress_for(3, stream=Tty()) as display:
        assert isinstance(display, LiveProgress) and display.live is not None


def test_a_score_change_that_rounds_to_zero_reads_plus_zero():
    from tune.progress import signed_delta

    # a tuned model scoring as its base, up to float noise, showed "-0.0000" in `stune train` and `stune report`
    assert signed_delta(0.41520000000000001 - 0.4152000000000001) == "+0.0000"
    assert signed_delta(-0.0) == "+0.0000"
    assert (signed_delta(0.01234), signed_delta(-0.00005001)) == ("+0.0123", "-0.0001")
