"""``stune train``: one fine-tune from a YAML config, and every bad input refused cleanly."""

import json
from pathlib import Path

import pytest
import yaml
from sentence_transformers import SentenceTransformer

from cli import assert_user_error, run_stune
from tiny import write_csv


def write_config(path, **config):
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_a_loadable_model_and_metrics(tiny_model, scored_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", model=tiny_model, loss={"name": "CoSENTLoss", "scale": 10.0}, data=scored_data,
                       max_steps=8, eval_steps=4, per_device_train_batch_size=8, learning_rate=1e-3)
    out = tmp_path / "out"
    proc = run_stune("train", cfg, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = SentenceTransformer(str(out / "model"))
    assert model.encode(["nurse"]).shape == (1, 32)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("eval", "test"):
        assert {"spearman_cosine", "pearson_cosine"} <= set(metrics[split])
        assert "spearman_cosine" in metrics["base"][split]
    assert metrics["loss"] == {"name": "CoSENTLoss", "scale": 10.0}
    assert [h["step"] for h in metrics["history"]] == [4, 8]
    assert (out / "train.log").read_text().count("spearman_cosine") >= 2
    assert "test" in proc.stdout and "base model" in proc.stdout
    assert not (out / "checkpoints").exists()
    # the best checkpoint is chosen on 40 eval pairs: the user is told that is few
    assert "warning: data.eval has 40 pairs (under 100)" in proc.stderr and "the checkpoint that tops them" in proc.stderr
    # Never overwritten without --force.
    again = run_stune("train", cfg, "--out", out)
    assert_user_error(again, "--out", "--force")


def test_model_data_and_seed_flags_override_the_config(tiny_model, scored_data, tmp_path):
    # the config names neither model nor data: without the flags this would train the bundled MiniLM
    cfg = write_config(tmp_path / "c.yaml", max_steps=4, eval_steps=2, per_device_train_batch_size=8, seed=1)
    folder = Path(scored_data["train"]).parent
    (tmp_path / "out").mkdir()  # and --out . in an empty folder: the shell's working directory stays valid
    proc = run_stune("train", cfg, "--model", tiny_model, "--data", folder, "--seed", "7", "--out", ".", cwd=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"] == str(tiny_model)
    assert {split: metrics["config"]["data"][split] for split in ("train", "eval", "test")} == scored_data
    assert metrics["config"]["seed"] == 7
    assert SentenceTransformer(str(tmp_path / "out" / "model")).encode(["nurse"]).shape == (1, 32)
    assert_user_error(run_stune("train", cfg, "--data", tmp_path / "nowhere"), "--data")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_asked_for_trains_without_a_gpu(precision, tiny_model, scored_data, tmp_path):
    # A config written for a GPU machine (bf16: true) must also run on a laptop: torch autocasts on CPU.
    import torch

    from trainers.config import TrainConfig
    from trainers.train import fine_tune

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    config = TrainConfig.model_validate({"model": tiny_model, "data": scored_data, "max_steps": 2, "eval_steps": 2,
                                         "per_device_train_batch_size": 8, precision: True})
    _, result = fine_tune(config, tmp_path, score_base=False)
    assert result.steps == 2 and -1 <= result.best["metrics"]["spearman_cosine"] <= 1


@pytest.mark.parametrize("tuned, says", [(0.70, True), (0.75, True), (0.80, False)])
def test_train_says_when_the_base_model_is_better(tuned, says, tmp_path, capsys):
    from trainers.train import TrainResult
    from tune.cli import _print_train_result

    result = TrainResult(best={"step": 4, "metrics": {"spearman_cosine": tuned}}, final={},
                         base={"eval": {"spearman_cosine": 0.75}})
    _print_train_result(result, tmp_path)
    out = capsys.readouterr().out
    assert ("does not beat the untuned base model" in out) == says, out
    assert f"{tuned:.4f}" in out and "0.7500" in out


def test_triplet_data_reports_triplet_accuracy(tiny_model, tmp_path):
    from tiny import scored_pairs, triplets_from

    files = {name: str(write_csv(tmp_path / f"{name}.csv", ["anchor", "positive", "negative"], triplets_from(scored_pairs(60, seed))))
             for name, seed in (("train", 1), ("eval", 2))}
    cfg = write_config(tmp_path / "c.yaml", model=tiny_model, loss={"name": "TripletLoss", "margin": 0.3}, data=files,
                       max_steps=4, per_device_train_batch_size=8)
    proc = run_stune("train", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["triplet_accuracy"] <= 1.0


def bad_inputs(tiny_model, scored_data, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir(exist_ok=True)
    (not_a_model / "weights.bin").write_text("x")
    bad_scores = write_csv(tmp_path / "bad_scores.csv", ["sentence1", "sentence2", "score"], [("a", "b", "high"), ("c", "d", "0.2")])
    no_score_col = write_csv(tmp_path / "cols.csv", ["title", "role", "sim"], [("a", "b", 1), ("c", "d", 0)])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    ok = dict(model=tiny_model, data=scored_data, max_steps=2)
    return {
        "unknown loss": ({**ok, "loss": "TripletLos"}, ["loss", "did you mean TripletLoss"]),
        "param the loss does not take": ({**ok, "loss": {"name": "TripletLoss", "scale": 3}}, ["TripletLoss does not take scale"]),
        "missing file": ({**ok, "data": {**scored_data, "train": str(tmp_path / "nope.csv")}}, ["nope.csv", "not found"]),
        "empty data": ({**ok, "data": {**scored_data, "train": str(empty)}}, ["empty"]),
        "missing column": ({**ok, "data": {**scored_data, "train": str(no_score_col), "columns": {"score": "label"}}}, ["data.columns.score", "'label'"]),
        "scores not numbers": ({**ok, "data": {**scored_data, "train": str(bad_scores)}}, ["not a number"]),
        "lr <= 0": ({**ok, "learning_rate": 0}, ["learning_rate", "greater than 0"]),
        "batch size < 1": ({**ok, "per_device_train_batch_size": 0}, ["per_device_train_batch_size"]),
        "not a SentenceTransformer": ({**ok, "model": str(not_a_model)}, ["model", "not a SentenceTransformer"]),
        "typo in a key": ({**ok, "lerning_rate": 1e-5}, ["did you mean 'learning_rate'"]),
    }


CASES = ["unknown loss", "param the loss does not take", "missing file", "empty data", "missing column", "scores not numbers",
         "lr <= 0", "batch size < 1", "not a SentenceTransformer", "typo in a key"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_nothing_written(case, tiny_model, scored_data, tmp_path):
    config, fragments = bad_inputs(tiny_model, scored_data, tmp_path)[case]
    cfg = write_config(tmp_path / "c.yaml", **config)
    out = tmp_path / "out"
    proc = run_stune("train", cfg, "--out", out, timeout=120)
    assert_user_error(proc, *fragments)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_yaml_and_missing_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    assert_user_error(run_stune("train", bad), "not valid YAML")
    assert_user_error(run_stune("train", tmp_path / "none.yaml"), "not found")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert_user_error(run_stune("train", listed), "mapping")


def _learning_rates(tensorboard_dir) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/learning_rate")}


@pytest.mark.parametrize("optimizer_state", [False, True])
def test_trial_checkpoint_resumes_at_its_learning_rate(optimizer_state, tiny_model, scored_data, tmp_path):
    """What a sweep trial does after a crash: resume from its last checkpoint. By default the
    checkpoint holds no optimizer state (a third of the size); the run must still go on at the
    checkpoint's step and learning rate, not restart its warm-up."""
    import shutil

    from trainers.config import TrainConfig
    from trainers.data import load_splits
    from trainers.train import OPTIMIZER_FILE, fine_tune

    config = TrainConfig.model_validate({
        "model": tiny_model, "data": scored_data, "max_steps": 8, "eval_steps": 4, "per_device_train_batch_size": 8,
        # 6 warm-up steps, then constant: a schedule restarted at step 4 would be at 4/6 of it by step 8.
        "learning_rate": 1e-3, "warmup_ratio": 0.75, "lr_scheduler_type": "constant_with_warmup",
        "checkpoint_optimizer_state": optimizer_state,
    })
    splits = load_splits(config)
    kept = []

    def keep_first(evaluation):
        if not kept:
            kept.append(shutil.copytree(evaluation.checkpoint, tmp_path / "step4"))

    fine_tune(config, tmp_path / "whole", splits=splits, on_evaluation=keep_first, score_base=False, tensorboard_dir=tmp_path / "tb-whole")
    assert (kept[0] / OPTIMIZER_FILE).exists() == optimizer_state
    _, resumed = fine_tune(config, tmp_path / "resumed", splits=splits, resume_from=kept[0], score_base=False, tensorboard_dir=tmp_path / "tb-resumed")
    assert [h["step"] for h in resumed.history] == [8]
    whole, after_resume = _learning_rates(tmp_path / "tb-whole"), _learning_rates(tmp_path / "tb-resumed")
    assert after_resume and min(after_resume) > 4
    assert whole[8] == pytest.approx(1e-3)
    assert after_resume[8] == pytest.approx(whole[8], rel=1e-6), (after_resume, whole)


def test_help_shows_every_option_as_written():
    """What ``--help`` prints is the help text itself: flags take no value, and text in brackets
    (the pip extra to install) is not eaten as markup."""
    for command in (["sweep"], ["train"], ["export"], ["cluster", "up"]):
        proc = run_stune(*command, "--help", env={"COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "<bool>" not in proc.stdout, proc.stdout
        assert "--force" in proc.stdout or "--multi-node" in proc.stdout
    sweep_help = run_stune("sweep", "--help", env={"COLUMNS": "200"}).stdout
    assert "stune[mlflow]" in sweep_help
    # each value is named as the README names it, not by its Python type
    for option in ("--out RUN_DIR", "--trials N", "--time-budget DURATION", "--storage URI", "--data DIR", "--dry-run"):
        assert option in sweep_help, sweep_help
    train_help = run_stune("train", "--help", env={"COLUMNS": "200"}).stdout
    for option in ("--data DIR", "--model PATH", "--seed SEED", "--out DIR"):
        assert option in train_help, train_help
    assert "--resume  " in sweep_help or "--resume\n" in sweep_help
    # what a bug report needs, in one line
    import ray
    import sentence_transformers

    versions = run_stune("--version")
    assert versions.returncode == 0, versions.stderr[-2000:]
    assert versions.stdout.startswith("stune 0.") and f"ray {ray.__version__}" in versions.stdout, versions.stdout
    assert f"sentence-transformers {sentence_transformers.__version__}" in versions.stdout, versions.stdout


def test_train_keeps_the_checkpoint_the_sweep_would_on_a_spearman_tie(tmp_path):
    """`stune train` and a sweep's best/ rank checkpoints alike: spearman_cosine, then pearson_cosine
    on the same eval pairs; an exact tie on both keeps the earlier checkpoint (tests/test_reliability.py
    checks the sweep side)."""
    from types import SimpleNamespace

    from trainers.train import _Watcher

    watcher = _Watcher(n_steps=40, on_evaluation=None, keep_best_model=True)
    output_dir = tmp_path / "checkpoints"
    args = SimpleNamespace(output_dir=str(output_dir))

    def evaluate_and_save(step: int, spearman: float, pearson: float) -> None:
        checkpoint = output_dir / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_text(f"weights at step {step}")
        state = SimpleNamespace(global_step=step, max_steps=40, epoch=step / 40)
        metrics = {"eval_eval_spearman_cosine": spearman, "eval_eval_pearson_cosine": pearson}
        watcher.on_evaluate(args, state, None, metrics=metrics)
        watcher.on_save(args, state, None)

    evaluate_and_save(10, 0.798, 0.80)
    evaluate_and_save(20, 0.798, 0.84)  # same ranks, similarities closer to the gold scores
    evaluate_and_save(30, 0.798, 0.84)  # a full tie: step 20 stays
    assert watcher.best()["step"] == 20
    assert (watcher.best_checkpoint / "model.safetensors").read_text() == "weights at step 20"
    evaluate_and_save(40, 0.799, 0.10)  # spearman decides first
    assert watcher.best()["step"] == 40
    assert (watcher.best_checkpoint / "model.safetensors").read_text() == "weights at step 40"


def test_a_model_whose_embeddings_ignore_the_text_is_refused_as_the_models_fault(tiny_model, scored_data, tmp_path):
    """Every pair scored alike before training: the model, not the learning rate, is at fault."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    model = SentenceTransformer(tiny_model)
    zero = Dense(32, 8, activation_function=torch.nn.Identity())
    torch.nn.init.zeros_(zero.linear.weight)
    torch.nn.init.zeros_(zero.linear.bias)
    SentenceTransformer(modules=[model[0], model[1], zero]).save(str(tmp_path / "constant"))
    cfg = write_config(tmp_path / "c.yaml", max_steps=2, eval_steps=1)
    folder = Path(scored_data["train"]).parent
    proc = run_stune("train", cfg, "--model", tmp_path / "constant", "--data", folder, "--out", tmp_path / "out")
    assert_user_error(proc, "gives every eval pair the same similarity", "check the model folder")
    assert "learning_rate" not in proc.stderr and not (tmp_path / "out").exists()


def test_data_folder_skips_editor_backups(tmp_path):
    from tune.cli import _data_folder

    for name in ("train.csv", "train.csv~", "eval.csv.bak", "validation.parquet", ".eval.csv.swp"):
        (tmp_path / name).write_text("x")
    assert _data_folder(tmp_path) == {"train": str(tmp_path / "train.csv"), "eval": str(tmp_path / "validation.parquet")}


def _train_then_signal(cfg, out, signum, *, after: str, wait: float) -> tuple[int, str]:
    """`stune train` in its own process group; ``signum`` to the group (SIGINT: Ctrl-C as a terminal
    sends it; SIGTERM: as scancel or Kubernetes do) ``wait`` s after a stderr line starting with ``after``."""
    import os
    import subprocess
    import threading
    import time

    from cli import STUNE

    proc = subprocess.Popen([STUNE, "train", str(cfg), "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith(after) for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(wait)
    os.killpg(proc.pid, signum)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    return code, "".join(lines) + proc.stdout.read()


def test_ctrl_c_or_sigterm_keeps_the_best_model_so_far_or_before_training_writes_nothing(tiny_model, scored_data, tmp_path):
    import signal

    # a run far too long to finish: a signal is how it ends (SIGTERM: a batch job's time limit, a pod deleted)
    cfg = write_config(tmp_path / "c.yaml", model=tiny_model, data=scored_data, max_steps=10**6, eval_steps=10**6,
                       per_device_train_batch_size=8)
    code, output = _train_then_signal(cfg, tmp_path / "out", signal.SIGTERM, after="base model", wait=3)  # training by then
    assert code == 143, output[-3000:]
    assert "stopped by SIGTERM at step" in output, output[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["interrupted"] == "SIGTERM" and 0 < metrics["steps"] < metrics["planned_steps"] == 10**6
    assert [h["step"] for h in metrics["history"]] == [metrics["steps"]]  # the step it stopped at was evaluated
    assert "test" in metrics and SentenceTransformer(str(tmp_path / "out" / "model")).encode(["nurse"]).shape == (1, 32)
    # before training starts (the base model is being loaded and scored): nothing is written, not even the temp folder.
    # (A second Ctrl-C takes the same path; two presses in a row cannot be timed reliably here: Python may handle them as one.)
    code, output = _train_then_signal(cfg, tmp_path / "again", signal.SIGINT, after="train data", wait=0)
    assert code == 130 and "interrupted (Ctrl-C): nothing was written" in output, output[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]


def test_texts_longer_than_the_model_takes_are_cut_to_its_limit(tiny_model, scored_data, tmp_path):
    # max_seq_length left at its default (128) on a model with 64 positions: texts are cut at 64
    # tokens, as sentence-transformers does, instead of a tensor-size error at the first long one
    rows = Path(scored_data["train"]).read_text().splitlines()
    long_text = " ".join(row.split(",")[0] for row in rows[1:60])
    (tmp_path / "train.csv").write_text("\n".join([rows[0], *(f"{long_text} {row}" for row in rows[1:])]) + "\n")
    cfg = write_config(tmp_path / "c.yaml", model=tiny_model, data={**scored_data, "train": str(tmp_path / "train.csv")},
                       max_steps=2, per_device_train_batch_size=8)
    proc = run_stune("train", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SentenceTransformer(str(tmp_path / "out" / "model")).max_seq_length == 64
    assert "max_seq_length" not in proc.stderr, proc.stderr[-3000:]
    # set above the model's limit (a recipe written for another model): the same, and the user is told
    cfg = write_config(tmp_path / "c.yaml", **{**yaml.safe_load(cfg.read_text()), "max_seq_length": 256})
    proc = run_stune("train", cfg, "--out", tmp_path / "out256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: max_seq_length 256 is more than the model takes (64 tokens" in proc.stderr, proc.stderr[-3000:]
    assert SentenceTransformer(str(tmp_path / "out256" / "model")).max_seq_length == 64
