"""Bad input, one table: every malformed config, data file or command line is refused by the real
``stune`` process with one line on stderr that names the problem and the fix, exit code 2, no
traceback, no Ray started (its temp dir stays empty) and nothing written (the case's folder is
byte-for-byte as before).

Each case runs in its own folder (cwd) with its own RAY_TMPDIR; the cases run a few at a time.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cli import STUNE
from tiny import scored_pairs

_SCRUB = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@dataclass
class Case:
    args: list[str]  # {cfg}, {out}, {case} are filled in
    expect: list[str]  # fragments the one error line must contain
    config: dict | str | None = None  # written to {cfg}: a dict as YAML, a str as is
    files: dict[str, str | bytes] = field(default_factory=dict)  # extra files in the case folder


def sweep_config(model: str, data: dict[str, str], **extra) -> dict:
    return {"model": model, "data": dict(data), "max_steps": 2, "trials": 2, "scheduler": "none"} | extra


def csv_text(header: list[str], rows: list[tuple]) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


GOOD_ROWS = [(a, b, s) for a, b, s in scored_pairs(8, seed=5)]


def cases(model: str, data: dict[str, str]) -> dict[str, Case]:
    sweep = ["sweep", "{cfg}", "--out", "{out}"]

    def cfg(**extra) -> dict:
        return sweep_config(model, data) | extra

    def with_train(name: str, content: str | bytes, **data_extra) -> Case:
        """A sweep whose train split is the file ``name`` holding ``content``."""
        return Case(sweep, [], cfg(data={**data, "train": "{case}/" + name, **data_extra}), {name: content})

    def data_case(name: str, content: str | bytes, expect: list[str], **data_extra) -> Case:
        case = with_train(name, content, **data_extra)
        case.expect = expect
        return case

    fake_run = {  # a finished sweep's run dir, as far as `stune export` checks before loading a model
        "run/sweep.json": json.dumps({"config": cfg(), "baseline": {"spearman_cosine": 0.1}}),
        "run/best.json": json.dumps({"trial_id": "t1", "spearman_cosine": 0.5, "config": {"loss": "CoSENTLoss"}, "step": 2}),
        "run/best/modules.json": "[]",
    }
    table = {
        # -- config: wrong types
        "trials is not a number": Case(sweep, ["trials", "valid integer"], cfg(trials="many")),
        "learning_rate is text": Case(sweep, ["learning_rate", "valid number"], cfg(learning_rate="fast")),
        "search is a list": Case(sweep, ["search"], cfg(search=["learning_rate"])),
        "max_steps is fractional": Case(sweep, ["max_steps"], cfg(max_steps=2.5)),
        "trust_remote_code is a string": Case(sweep, ["trust_remote_code", "boolean"], cfg(trust_remote_code="yes")),
        # -- config: unknown keys, with a did-you-mean
        "typo in a top-level key": Case(sweep, ["'trails'", "did you mean 'trials'"], cfg(trails=4)),
        "typo in a search key": Case(sweep, ["'learnin_rate'", "did you mean 'learning_rate'"],
                                     cfg(search={"learnin_rate": {"low": 1e-5, "high": 1e-3}})),
        "typo in asha": Case(sweep, ["asha.grace", "known keys: grace_period"], cfg(asha={"grace": 1})),
        "typo in data": Case(sweep, ["trian", "did you mean 'train'"], cfg(data={"trian": data["train"], "eval": data["eval"]})),
        "unknown key in an initial point": Case(sweep, ["initial_points[0]", "unknown key 'lerning_rate'"],
                                                cfg(initial_points=[{"lerning_rate": 1e-3}])),
        # -- config: zero or negative values
        "zero trials": Case(sweep, ["trials", "greater than or equal to 1"], cfg(trials=0)),
        "zero concurrent trials": Case(sweep, ["max_concurrent_trials", "greater than or equal to 1"], cfg(max_concurrent_trials=0)),
        "negative max_failures": Case(sweep, ["max_failures", "greater than or equal to 0"], cfg(max_failures=-1)),
        "zero evaluations per trial": Case(sweep, ["evaluations_per_trial"], cfg(evaluations_per_trial=0)),
        "negative cpus per trial": Case(sweep, ["cpus_per_trial", "greater than 0"], cfg(cpus_per_trial=-1)),
        "zero learning rate": Case(sweep, ["learning_rate", "greater than 0"], cfg(learning_rate=0)),
        "batch size 0 in the search": Case(sweep, ["per_device_train_batch_size", "out of range"],
                                           cfg(search={"per_device_train_batch_size": [0, 8]})),
        "log range from 0": Case(sweep, ["learning_rate", "log range needs low > 0"],
                                 cfg(search={"learning_rate": {"low": 0, "high": 1e-3, "log": True}})),
        "positive_threshold above 1": Case(sweep, ["positive_threshold"], cfg(data={**data, "positive_threshold": 1.5})),
        # -- config: empty search space, inverted ranges
        "no losses to search": Case(sweep, ["search.losses", "is empty"], cfg(search={"losses": []})),
        "empty choice list": Case(sweep, ["per_device_train_batch_size", "empty list"], cfg(search={"per_device_train_batch_size": []})),
        "inverted range": Case(sweep, ["warmup_ratio", "greater than high", "swap"],
                               cfg(search={"warmup_ratio": {"low": 0.2, "high": 0.1}})),
        # -- config: unknown loss / searcher / scheduler, bad duration
        "unknown loss in the search": Case(sweep, ["FancyLoss"], cfg(search={"losses": ["FancyLoss"]})),
        "a searched choice a trial would refuse": Case(sweep, ["lr_scheduler_type", "'bogus' cannot be used", "cosine"],
                                                       cfg(search={"lr_scheduler_type": ["linear", "bogus"]})),
        "a loss range reaching a value the loss refuses": Case(sweep, ["CoSENTLoss.scale", "must be > 0"],
                                                               cfg(search={"CoSENTLoss": {"scale": {"low": 0, "high": 10}}})),
        "misspelt loss": Case(sweep, ["TripletLos", "did you mean TripletLoss"], cfg(loss="TripletLos")),
        "parameter the loss does not take": Case(sweep, ["TripletLoss does not take 'scale'"],
                                                 cfg(search={"TripletLoss": {"scale": {"low": 1, "high": 2}}})),
        "initial point with a value its loss refuses": Case(sweep, ["initial_points[0]", "TripletLoss.distance must be one of"],
                                                            cfg(initial_points=[{"loss": "TripletLoss", "distance": "chebyshev"}])),
        "initial point the space cannot run": Case(sweep, ["initial_points[0].loss", "not searched", "search.losses"],
                                                   cfg(initial_points=[{"loss": "TripletLoss"}], search={"losses": ["CoSENTLoss"]})),
        "unknown searcher": Case(sweep, ["searcher", "'tpe'"], cfg(searcher="bayes")),
        "unknown scheduler": Case(sweep, ["scheduler", "'asha'"], cfg(scheduler="hyperband")),
        "time budget is not a duration": Case(sweep, ["time budget", "10m"], cfg(time_budget="soon")),
        # -- config files
        "invalid YAML": Case(sweep, ["not valid YAML", "fix the syntax"], "trials: [1,\n"),
        # safe_load only: a python tag is refused, not run (the case folder must stay unchanged)
        "YAML python tag": Case(sweep, ["not valid YAML"], "!!python/object/apply:os.system ['touch {case}/PWNED']\n"),
        "YAML that is not a mapping": Case(sweep, ["must be a mapping"], "- a\n- b\n"),
        "config file missing": Case(["sweep", "{case}/nope.yaml", "--out", "{out}"], ["nope.yaml", "not found"]),
        # -- data
        "missing data file": Case(sweep, ["missing.csv", "not found"], cfg(data={**data, "train": "{case}/missing.csv"})),
        "empty data file": data_case("train.csv", "", ["empty", "header row"]),
        "header only": data_case("train.csv", "sentence1,sentence2,score\n", ["0 data row(s)", "at least 2"]),
        "column mapping names a missing column": data_case(
            "train.csv", csv_text(["title", "role", "sim"], GOOD_ROWS), ["data.columns.score", "'label'"], columns={"score": "label"}),
        # a data row read as the header would be one pair lost without a word
        "CSV without a header row": data_case("train.csv", csv_text(["nurse", "doctor", "0.9"], GOOD_ROWS),
                                              ["first line", "'nurse,doctor,0.9'", "add a header row"]),
        "one text column": data_case("train.csv", csv_text(["sentence1"], [(a,) for a, _, _ in GOOD_ROWS]), ["two text columns"]),
        "score is not a number": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], [("nurse", "doctor", "high"), *GOOD_ROWS]),
                                           ["row 2", "not a number"]),
        "negative score": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], [("nurse", "doctor", -1), *GOOD_ROWS]),
                                    ["below 0", "0–1, 0–5 or 0–100"]),
        "score above 100": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], [("nurse", "doctor", 250), *GOOD_ROWS]),
                                     ["250", "0–1, 0–5 or 0–100"]),
        "NaN score": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], [("nurse", "doctor", "nan"), *GOOD_ROWS]),
                               ["finite"]),
        "ragged rows": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS) + "a,b,0.5,extra\n",
                                 ["cannot be read", "UTF-8 CSV"]),
        "mixed shapes in JSON lines": data_case(
            "train.jsonl", '{"sentence1": "nurse", "sentence2": "doctor", "score": 0.5}\n{"sentence1": ["a", "b"], "score": "x"}\n',
            ["train.jsonl"]),
        "non-UTF-8 bytes": data_case("train.csv", "sentence1,sentence2,score\ncaf\xe9 owner,chef,0.5\nnurse,doctor,0.2\n".encode("latin-1"),
                                     ["UTF-8"]),
        "empty text cell": data_case("train.csv", csv_text(["sentence1", "sentence2", "score"], [("nurse", " ", 0.5), *GOOD_ROWS]),
                                     ["empty or not text"]),
        "unsupported file type": data_case("train.xlsx", "PK", ["unsupported file type", ".csv"]),
        "one-row eval split": Case(sweep, ["eval.csv", "1 data row(s)", "at least 2"],
                                   cfg(data={**data, "eval": "{case}/eval.csv"}),
                                   {"eval.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS[:1])}),
        "eval split with one score for every pair": Case(sweep, ["data.eval", "every pair has score 1", "different scores"],
                                                         cfg(data={**data, "eval": "{case}/eval.csv"}),
                                                         {"eval.csv": csv_text(["sentence1", "sentence2", "score"],
                                                                               [(a, b, 1.0) for a, b, _ in GOOD_ROWS])}),
        "listed loss the train split cannot feed": Case(
            sweep, ["search.losses: MultipleNegativesRankingLoss cannot train on data.train", "positive_threshold"],
            cfg(search={"losses": ["CoSENTLoss", "MultipleNegativesRankingLoss"]}, data={**data, "train": "{case}/train.csv"}),
            {"train.csv": csv_text(["sentence1", "sentence2", "score"], [(a, b, 0.2) for a, b, _ in GOOD_ROWS])}),
        "--data folder without a train file": Case(["sweep", "--data", "{case}/d", "--model", model, "--out", "{out}"],
                                                   ["no train file", "train.csv", "--data FILE"],
                                                   files={"d/eval.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS)}),
        # -- data: eval/test held out of train
        "held-out share above 1": Case(sweep, ["data.eval", "between 0 and 1", "0.1"], cfg(data={"train": data["train"], "eval": 1.5})),
        "held-out shares over half of train": Case(sweep, ["hold out 0.6", "at least half"],
                                                   cfg(data={"train": data["train"], "eval": 0.3, "test": 0.3})),
        "held-out test share without train": Case(sweep, ["data.test is a share of data.train", "give data.train"],
                                                  cfg(data={"test": 0.1})),
        "held-out eval of one row": Case(sweep, ["held out as eval", "holds 1 row(s)", "hold out more"],
                                         cfg(data={"train": "{case}/train.csv", "eval": 0.05}),
                                         {"train.csv": csv_text(["sentence1", "sentence2", "score"],
                                                                [(f"title {i}", "nurse", i / 8) for i in range(8)])}),
        # -- model
        "model is not a folder": Case(["sweep", "--model", "{case}/no-model", "--out", "{out}"], ["not a local folder"]),
        "model folder is not a SentenceTransformer": Case(["sweep", "--model", "{case}/m", "--out", "{out}"],
                                                          ["not a SentenceTransformer"], files={"m/weights.bin": "x"}),
        # -- command line
        "export to an existing folder": Case(["export", "{case}/run", "--out", "{case}/mine"], ["--out", "already exists", "--force"],
                                             files={**fake_run, "mine/notes.txt": "my own file"}),
        # --force replaces an output, never what the run reads
        "export --force over its own run dir": Case(["export", "{case}/run", "--out", "{case}/run", "--force"],
                                                    ["--out", "holds the sweep", "choose another --out"], files=fake_run),
        "export --force into its run dir's best/": Case(["export", "{case}/run", "--out", "{case}/run/best", "--force"],
                                                        ["inside the sweep's run dir"], files=fake_run),
        "report over a file no report wrote": Case(["report", "{case}/run", "--out", "{case}/mine"],
                                                   ["--out", "already holds report.html", "--force"],
                                                   files={**fake_run, "mine/report.html": "my own page"}),
        # MLflow 3 refuses a folder store; a server that is not there is asked once, not for minutes
        "--mlflow folder store": Case([*sweep, "--mlflow", "file://{case}/mlruns"], ["--mlflow", "cannot log there", "sqlite:///"], cfg()),
        "--mlflow server not listening": Case([*sweep, "--mlflow", "http://127.0.0.1:9"], ["--mlflow", "cannot log there", "Connection refused"],
                                              cfg()),
        "sweep --force with --storage over the folder of its data": Case(
            ["sweep", "{cfg}", "--storage", "{case}", "--out", "d", "--force"], ["holds data.train", "choose another --out"],
            cfg(data={**data, "train": "{case}/d/train.csv"}), {"d/train.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS)}),
        "--out a path with --storage": Case(["sweep", "{cfg}", "--storage", "{case}/store", "--out", "{case}/x"],
                                            ["with --storage", "give --out just the name", "--out x"], cfg()),
        "sweep --out a file": Case([*sweep[:2], "--out", "{case}/afile"], ["is a file", "names a folder"], cfg(), {"afile": "mine"}),
        "train --out a file": Case(["train", "--data", "{case}/d", "--model", model, "--out", "{case}/afile"], ["is a file"],
                                   files={"afile": "mine", **{f"d/{split}.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS)
                                                              for split in ("train", "eval")}}),
        "export --force to a file": Case(["export", "{case}/run", "--out", "{case}/afile", "--force"], ["is a file"],
                                         files={**fake_run, "afile": "mine"}),
        "report --out a file": Case(["report", "{case}/run", "--out", "{case}/afile"], ["is a file"], files={**fake_run, "afile": "mine"}),
        "--data folder with two train files": Case(["sweep", "--data", "{case}/d", "--model", model, "--out", "{out}"],
                                                   ["train.csv and train.jsonl could each be the train split"],
                                                   files={"d/train.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS),
                                                          "d/train.jsonl": "{}\n",
                                                          "d/eval.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS)}),
        "two column roles on one column": Case(sweep, ["data.columns", "sentence1 and sentence2 both name column 'b'"],
                                               cfg(data={**data, "columns": {"sentence1": "b", "sentence2": "b"}})),
        "train given a sweep config": Case(["train", "{cfg}", "--out", "{out}"], ["scheduler, trials are sweep keys", "stune sweep"],
                                            cfg()),
        "train --force over the folder of its data": Case(
            ["train", "--data", "{case}/d", "--model", model, "--out", "{case}/d", "--force"], ["holds data.train", "choose another --out"],
            files={f"d/{split}.csv": csv_text(["sentence1", "sentence2", "score"], GOOD_ROWS) for split in ("train", "eval")}),
        "sweep --force over the folder of its config": Case(["sweep", "{cfg}", "--out", "{case}", "--force"],
                                                            ["--out", "holds CONFIG", "choose another --out"], cfg()),
        "export from a folder that is no sweep": Case(["export", "{case}/plain", "--out", "{out}"], ["not a stune sweep"],
                                                      files={"plain/notes.txt": "my own file"}),
        "export before any trial finished": Case(["export", "{case}/run", "--out", "{out}"], ["nothing to export"],
                                                 files={"run/sweep.json": fake_run["run/sweep.json"]}),
        "resume a folder that is no sweep": Case(["sweep", "--resume", "--out", "{case}/plain"], ["--resume", "not a stune sweep"],
                                                 files={"plain/notes.txt": "my own file"}),
        "resume a folder that is not there": Case(["sweep", "--resume", "--out", "{case}/nothing"], ["--resume", "does not exist"]),
        "resume a sweep stopped before it saved a state": Case(["sweep", "--resume", "--out", "{case}/run"],
                                                              ["--resume", "stopped before its first trial", "--force"],
                                                              files={"run/sweep.json": fake_run["run/sweep.json"]}),
        "export from what stune train wrote": Case(["export", "{case}/trained", "--out", "{out}"],
                                                   ["output of 'stune train'", "ready to load from {case}/trained/model"],
                                                   files={"trained/metrics.json": "{}", "trained/model/config.json": "{}"}),
        "resume without --out": Case(["sweep", "--resume"], ["--resume needs --out"]),
        "resume with a new trial count": Case(["sweep", "--resume", "--trials", "20", "--out", "{out}"],
                                              ["--resume", "--trials would be ignored", "--warm-start-from"]),
        "resume with a config": Case(["sweep", "{cfg}", "--resume", "--seed", "3", "--out", "{out}"],
                                     ["CONFIG, --seed would be ignored", "drop them"], cfg()),
        "sweep into a folder in use": Case(["sweep", "{cfg}", "--out", "{case}/plain"], ["already exists", "--resume", "--force"],
                                           cfg(), {"plain/notes.txt": "my own file"}),
        "zero trials on the command line": Case(["sweep", "--trials", "0", "--out", "{out}"], ["--trials", "stune sweep --help"]),
        "--time-budget that is no duration": Case(["sweep", "{cfg}", "--time-budget", "soon", "--out", "{out}"],
                                                  ["--time-budget", "'soon'", "10m"], cfg()),
        "unknown option": Case(["sweep", "--trails", "3", "--out", "{out}"], ["--trails", "--trials"]),
        "--address that is no address": Case(["sweep", "{cfg}", "--address", "not an address", "--out", "{out}"],
                                             ["--address", "HOST:PORT"], cfg()),
    }
    return table


def fill(value, case_dir: Path):
    if isinstance(value, str):
        return value.replace("{case}", str(case_dir)).replace("{cfg}", str(case_dir / "c.yaml")).replace("{out}", str(case_dir / "out"))
    if isinstance(value, dict):
        return {fill(k, case_dir): fill(v, case_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, case_dir) for v in value]
    return value


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its type, size, mtime and content hash (files)."""
    import hashlib

    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(folder))] = (path.is_dir(), st.st_size if path.is_file() else 0, st.st_mtime_ns, digest)
    return out


def run_case(name: str, case: Case, root: Path) -> str | None:
    """Run one case; None when it behaves, else what went wrong."""
    case_dir = root / name.replace(" ", "_").replace("/", "_").replace("-", "_")
    case_dir.mkdir(parents=True)
    for rel, content in case.files.items():
        path = case_dir / fill(rel, case_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content, case_dir), encoding="utf-8")
    if case.config is not None:
        config = fill(case.config, case_dir)
        (case_dir / "c.yaml").write_text(config if isinstance(config, str) else yaml.safe_dump(config), encoding="utf-8")
    ray_tmp = Path(tempfile.mkdtemp(prefix="sbi-", dir="/tmp"))
    try:
        before = snapshot(case_dir)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(HF_HUB_OFFLINE="1", RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")
        proc = subprocess.run([STUNE, *fill(case.args, case_dir)], capture_output=True, text=True, cwd=case_dir, env=env,
                              timeout=120, stdin=subprocess.DEVNULL)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit code {proc.returncode}")
        if "Traceback" in proc.stderr:
            problems.append("traceback")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr is not one 'error:' line: {proc.stderr[-1500:]!r}")
        else:
            missing = [f for f in fill(case.expect, case_dir) if f not in lines[0]]
            if missing:
                problems.append(f"{lines[0]!r} lacks {missing}")
        if any(ray_tmp.iterdir()):  # a Ray that started leaves RAY_TMPDIR/ray (its session folder goes)
            problems.append(f"Ray started: {sorted(p.name for p in ray_tmp.iterdir())}")
        after = snapshot(case_dir)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"wrote or changed {[c[0] for c in changed][:5]}")
        return f"{name}: {'; '.join(problems)}" if problems else None
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_bad_inputs_one_line_exit_2_no_ray_nothing_written(tiny_model, scored_data, tmp_path):
    table = cases(tiny_model, scored_data)
    assert len(table) >= 30
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda item: run_case(item[0], item[1], tmp_path), table.items()))
    failures = [r for r in results if r]
    assert not failures, f"{len(failures)} of {len(table)} bad inputs misbehaved:\n" + "\n".join(failures)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
