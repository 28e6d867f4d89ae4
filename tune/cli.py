"""``stune``: train one model, sweep many, export the best, look at a sweep, run clusters."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer

# Nothing is ever downloaded from a model hub at run time: models are local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TIME_BUDGET = "8m"
DEFAULT_TRAIN_STEPS = 30

app = typer.Typer(
    help="Hyperparameter search and training for sentence-embedding models (Ray Tune + Optuna + sentence-transformers).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich markup would read "stune[mlflow]" as a style tag, and typer's rich panels
    # show flags as taking a "<bool>" value.
    rich_markup_mode=None,
)


def _print_versions(asked: bool) -> None:
    """``stune --version``: stune's and the versions a bug report needs, read without importing them."""
    if not asked:
        return
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    libraries = ("sentence-transformers", "transformers", "torch", "ray", "optuna")
    typer.echo(f"stune {installed('stune')} ({', '.join(f'{name} {installed(name)}' for name in libraries)}; "
               f"Python {sys.version.split()[0]})")
    raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(False, "--version", callback=_print_versions, is_eager=True,
                                      help="Print stune's version and its libraries' and exit."),
) -> None:
    pass


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("stune")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    if not verbose:
        for noisy in ("sentence_transformers", "transformers", "datasets", "ray", "optuna", "accelerate"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


class _UserErrors:
    """Bad input -> one line on stderr, exit 2, no traceback; Ctrl-C -> one line, exit 130."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        from trainers.errors import StuneError

        try:
            from cluster.errors import ClusterError
        except ImportError:  # pragma: no cover
            ClusterError = StuneError
        if isinstance(exc, (StuneError, ClusterError)):
            _fail(str(exc))
        if isinstance(exc, KeyboardInterrupt):  # train, export and report write all or nothing
            typer.echo(f"interrupted ({getattr(exc, 'signal_name', 'Ctrl-C')}): nothing was written", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 130))
        return False


DATA_HELP = ("Folder holding train.*, eval.* and optionally test.* files; without eval.*, or given one data file, "
             "10 % of train is held out as eval (and as test).")
MODEL_HELP = "Local SentenceTransformer folder (default: bundled MiniLM)."


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, metavar="CONFIG", help="YAML config; omitted: bundled MiniLM on the embedded HR data."),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR", help=DATA_HELP),
    model: Optional[str] = typer.Option(None, "--model", metavar="PATH", help=MODEL_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="SEED", help="Random seed of the run: data order, dropout [42]."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Output folder (model/, metrics.json, train.log)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Fine-tune one model with one loss and one set of hyperparameters (no Ray)."""
    _setup_logging(verbose)
    with _UserErrors():
        from trainers.config import input_paths, load_train_config, refuse_out_holding_inputs
        from trainers.errors import ConfigError

        from trainers.data import load_splits
        from trainers.model import max_seq_length_warning, resolve_model_path

        # No config: the demo run on the embedded data, sized for a few minutes on 2 CPU cores.
        demo = {} if config else {"max_steps": DEFAULT_TRAIN_STEPS, "eval_steps": DEFAULT_TRAIN_STEPS // 2}
        _refuse_sweep_keys(config)
        cfg = load_train_config(config, **demo, model=model, seed=seed, **(_data_folder(data) if data else {}))
        out = out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        refuse_out_holding_inputs(out, {"CONFIG": config, **input_paths(cfg)})  # before any warning
        if out.exists() and any(out.iterdir()) and not force:
            raise ConfigError(f"--out {out} already exists and is not empty; pass --force to replace it or choose another --out")
        splits = load_splits(cfg)  # bad data and model paths fail here, before torch is imported
        if warning := max_seq_length_warning(cfg, resolve_model_path(cfg.model)):
            logging.getLogger("stune").warning(warning)
        from trainers.evaluation import selection_warnings

        for warning in selection_warnings(splits, "checkpoint"):
            logging.getLogger("stune").warning(warning)
        from trainers.train import train_to_dir

        result = train_to_dir(cfg, out, splits=splits, force=force, verbose=verbose)
    _print_train_result(result, out)
    if result.interrupted:  # written, but not the run that was asked for: a script must not take it for one
        raise typer.Exit(143 if result.interrupted == "SIGTERM" else 130)


def _refuse_sweep_keys(config: Path | None) -> None:
    """A sweep config given to `stune train`: say so, rather than "unknown key 'trials'"."""
    from trainers.config import TrainConfig, read_yaml
    from trainers.errors import ConfigError
    from tune.config import SweepConfig

    sweep_keys = [k for k in read_yaml(config) if k in SweepConfig.model_fields and k not in TrainConfig.model_fields]
    if sweep_keys:
        keys = ", ".join(sweep_keys)
        raise ConfigError(f"{config}: {keys} {'are sweep keys' if len(sweep_keys) > 1 else 'is a sweep key'}; "
                          f"run it with `stune sweep {config}`, or drop {keys} to train one model")


def _print_train_result(result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from tune.progress import signed_delta

    table = Table(title=f"spearman_cosine  (model saved to {out / 'model'})")
    table.add_column("split")
    table.add_column("base model", justify="right")
    table.add_column("fine-tuned", justify="right")
    table.add_column("change", justify="right")
    rows = [("eval", result.base.get("eval"), result.best["metrics"])]
    if result.test is not None:
        rows.append(("test", result.base.get("test"), result.test))
    for name, base, tuned in rows:
        b, t = base["spearman_cosine"] if base else None, tuned["spearman_cosine"]
        table.add_row(name, f"{b:.4f}" if b is not None else "–", f"{t:.4f}", signed_delta(t - b) if b is not None else "")
    console = Console(soft_wrap=True)
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]stopped by {result.interrupted} at step {result.steps} of {result.planned_steps}: the model is the best of "
                      f"the evaluations so far (step {result.best['step']})[/yellow]")
    base_eval, tuned_eval = (result.base.get("eval") or {}).get("spearman_cosine"), result.best["metrics"]["spearman_cosine"]
    if base_eval is not None and tuned_eval <= base_eval:  # the same rule as a sweep's export
        console.print(
            f"[yellow]the fine-tuned model does not beat the untuned base model on eval ({tuned_eval:.4f} <= "
            f"{base_eval:.4f}): keep the base model, or let `stune sweep` search losses and learning rates[/yellow]"
        )


@app.command()
def sweep(
    config: Optional[Path] = typer.Argument(None, metavar="CONFIG", help="YAML config (a train config plus search:, trials:, ...)."),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR", help=DATA_HELP),
    model: Optional[str] = typer.Option(None, "--model", metavar="PATH", help=MODEL_HELP),
    trials: Optional[int] = typer.Option(None, "--trials", metavar="N", min=1, help="Number of trials."),
    out: Optional[str] = typer.Option(None, "--out", metavar="RUN_DIR", help="Run directory (default runs/sweep-<time>)."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDR", help="Ray cluster: auto or HOST:PORT (default: local, loopback only)."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URI", help="Put the run directory under this URI (s3://bucket/prefix, gs://...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out after a crash or Ctrl-C."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="SEED", help="Seed of the searcher and of every trial."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", metavar="DURATION", help=f"Stop the sweep after e.g. 10m, 2h; trials still running end as out_of_time (default without a config: {DEFAULT_TIME_BUDGET})."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --out."),
    warm_start_from: Optional[str] = typer.Option(
        None, "--warm-start-from", metavar="RUN_DIR", help="RUN_DIR of an earlier sweep: its finished trials (study.db) seed the searcher."
    ),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", metavar="URI", help="MLflow tracking URI: log each trial's params and metrics there (needs stune[mlflow])."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own progress tables and logs instead of stune's progress view."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the config, data and model, print the plan (trials, resources, search space) and exit: nothing run or written."
    ),
) -> None:
    """Search losses and hyperparameters with Ray Tune + Optuna; keep the best checkpoint."""
    _setup_logging(verbose)
    with _UserErrors():
        from trainers.errors import ConfigError
        from trainers.config import refuse_out_holding_inputs
        from tune.config import load_sweep_config, parse_duration

        if resume and not out:
            raise ConfigError("--resume needs --out RUN_DIR: the run directory of the sweep to continue")
        if resume and dry_run:
            raise ConfigError("--dry-run plans a new sweep; a --resume goes on as the sweep in --out was started")
        if resume and (ignored := [name for name, given in (
            ("CONFIG", config), ("--data", data), ("--model", model), ("--trials", trials), ("--seed", seed),
            ("--time-budget", time_budget), ("--warm-start-from", warm_start_from), ("--mlflow", mlflow),
        ) if given is not None]):
            raise ConfigError(
                f"--resume continues the sweep in --out as it was started, so {', '.join(ignored)} would be ignored: "
                f"drop {'them' if len(ignored) > 1 else 'it'}; to search further, start a new sweep with --warm-start-from RUN_DIR"
            )
        splits = _data_folder(data) if data else {}
        if config is None and time_budget is None and not resume:
            time_budget = DEFAULT_TIME_BUDGET  # the no-config sweep must end in ~10 minutes on 2 CPU cores
        if time_budget is not None:
            try:
                parse_duration(time_budget)
            except ValueError as exc:
                raise ConfigError(f"--time-budget: {exc}") from None
        cfg = load_sweep_config(config, model=model, trials=trials, seed=seed, time_budget=time_budget, **splits)
        from tune.engine import default_run_dir, run_sweep

        if storage and out and os.path.normpath(out) != os.path.basename(os.path.normpath(out)):
            raise ConfigError(f"--out {out}: with --storage the run dir is {storage.rstrip('/')}/<name>; "
                              f"give --out just the name, e.g. --out {os.path.basename(os.path.normpath(out))}")
        out = out or default_run_dir()
        if not resume:
            from tune.engine import run_dir_uri
            from tune.rundir import RunDir

            if (where := RunDir.open(run_dir_uri(out, storage))).is_local:
                refuse_out_holding_inputs(where.path, {"CONFIG": config})
        if dry_run:
            from trainers.data import load_splits
            from trainers.model import max_seq_length_warning, resolve_model_path
            from tune.plan import plan_lines
            from tune.engine import check_run_dir, sweep_inputs

            run_dir = check_run_dir(out, storage=storage, resume=False, force=force, inputs=sweep_inputs(cfg, warm_start_from))  # CONFIG: above
            where = run_dir.uri + (" (exists: --force empties it when the sweep starts)" if not run_dir.is_empty() else "")
            splits = load_splits(cfg)
            model_path = resolve_model_path(cfg.model)
            lines = plan_lines(cfg, splits, model_path, out=where)
            typer.echo("\n".join(lines))
            from trainers.evaluation import selection_warnings

            # what the sweep would warn of, checked now
            for warning in [*selection_warnings(splits, "trial"), max_seq_length_warning(cfg, model_path)]:
                if warning:
                    logging.getLogger("stune").warning(warning)
            return
        try:
            from tune.progress import progress_for

            budget = parse_duration(cfg.time_budget) if cfg.time_budget else None
            # a live view on a terminal, one line per finished trial otherwise, Ray's tables with --verbose
            with progress_for(cfg.trials, verbose=verbose, time_budget_s=budget) as on_event:
                summary = run_sweep(
                    cfg, out, address=address, storage=storage, resume=resume, force=force, verbose=verbose,
                    on_event=on_event, warm_start_from=warm_start_from, mlflow=mlflow,
                )
        except KeyboardInterrupt as exc:
            from tune.faults import resume_hint

            typer.echo(f"\n{resume_hint(out, storage)}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 130))
    _print_sweep_summary(summary)


HOLD_OUT = 0.1  # the share of train held out for each missing eval/test split of --data


def _data_folder(folder: Path) -> dict[str, str | float]:
    """``--data``'s splits: a folder's train/eval/test files; eval (and test, when there is no
    test file either) held out of train where the folder has no such file; a single file is train."""
    from trainers.errors import ConfigError

    from trainers.data import READABLE_SUFFIXES

    if folder.is_file() and folder.name.lower().endswith(READABLE_SUFFIXES):
        found: dict[str, str | float] = {"train": str(folder)}
    elif not folder.is_dir():
        raise ConfigError(f"--data {folder} is not a folder or a data file; give a folder with train.* (and eval.*, test.*) "
                          "files or one csv, tsv, jsonl or parquet file")
    else:
        found = {}
        for split, names in {"train": ("train",), "eval": ("eval", "validation", "dev"), "test": ("test",)}.items():
            candidates = [path for path in sorted(folder.iterdir()) if path.name.split(".")[0] in names
                          and (path.is_dir() or path.name.lower().endswith(READABLE_SUFFIXES))]  # not train.csv~ or .bak
            if len(candidates) > 1:
                raise ConfigError(f"--data {folder}: {' and '.join(p.name for p in candidates)} could each be the {split} split; "
                                  "keep one there, or name the files under data: in a config")
            if candidates:
                found[split] = str(candidates[0])
        if "train" not in found:
            raise ConfigError(f"--data {folder}: no train file; name it train.csv (and eval.csv, test.csv), "
                              "or pass the one data file as --data FILE")
    if "eval" not in found:
        held = ["eval"] + ([] if "test" in found else ["test"])
        found.update({split: HOLD_OUT for split in held})
        train_name = Path(str(found["train"])).name
        shares = " and ".join([f"{HOLD_OUT:.0%} of {train_name} as {held[0]}", *(f"{HOLD_OUT:.0%} as {s}" for s in held[1:])])
        typer.echo(f"--data {folder}: holding out {shares} (rows grouped by their first text); "
                   "to choose, set data.eval/data.test in a config", err=True)
    return found


def _print_sweep_summary(summary: dict) -> None:
    from rich.console import Console

    from tune.progress import describe_counts

    console = Console(soft_wrap=True)  # one line per fact, also in logs and pipes (rich wraps at 80 there)
    counts = summary["counts"]
    best = summary["best"]
    base = summary["baseline"]["spearman_cosine"]
    console.print(f"trials: {describe_counts(counts)}  ({summary['wall_seconds']:.0f} s)")
    if best is None:
        console.print("[red]no trial finished an evaluation[/red]")
        started = sum(n for status, n in counts.items() if status != "pending")
        if counts["errored"]:
            console.print(f"why each trial failed: stune report {shlex.quote(summary['run_dir'])}", highlight=False)
        elif not started:  # they queued for resources until the time budget ended the sweep
            console.print("no trial started before the time budget ran out: each waited for the CPUs/GPUs it asks; "
                          "add them to the cluster, lower cpus_per_trial/gpus_per_trial, or lengthen --time-budget")
        else:
            console.print("the time budget ran out before a trial's first evaluation: lengthen --time-budget, "
                          "or evaluate sooner (evaluations_per_trial, eval_steps)")
        raise typer.Exit(1)  # a sweep that found no model has failed, for scripts too
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["config"].items())
    interval = summary.get("best_interval_95")
    spread = f"95 % interval {interval[0]:.2f}–{interval[1]:.2f} on {summary['eval_pairs']} pairs; " if interval else ""
    console.print(
        f"best eval spearman_cosine {best['spearman_cosine']:.4f} ({spread}base model {base:.4f})"
        f" — trial {best['trial_id']} step {best['step']}: {params}"
    )
    if summary["beats_baseline"]:
        console.print(f"export it with: stune export {shlex.quote(summary['run_dir'])} --out <folder>", highlight=False)
    else:
        console.print("[yellow]no trial beat the untuned base model: keep the base model, or widen the search[/yellow]")
        console.print(f"export it anyway with: stune export {shlex.quote(summary['run_dir'])} --out <folder> --force", highlight=False)


@app.command()
def export(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="Run directory of a sweep (local path or URI)."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Folder to write the model to."),
    force: bool = typer.Option(False, "--force", help="Replace --out; export even if no trial beat the base model."),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", metavar="URI", help="MLflow tracking URI to log the exported model to (default: the sweep's --mlflow, if any)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Export the sweep's best checkpoint as a SentenceTransformer folder with a model card."""
    _setup_logging(verbose)
    with _UserErrors():
        from tune.exporter import export_best

        result = export_best(run_dir, out, force=force, mlflow=mlflow)
    scores = result["scores"]
    line = f"exported to {out}: eval spearman_cosine {scores['eval']['spearman_cosine']:.4f}"
    if "test" in scores:
        line += f", test {scores['test']['spearman_cosine']:.4f} (base model {scores['base_test']['spearman_cosine']:.4f})"
    if result.get("mlflow_run_id"):
        line += f"; logged to MLflow run {result['mlflow_run_id']}"
    typer.echo(line)
    typer.echo(f"to train the winner again or scale it up: stune train {shlex.quote(str(Path(out) / 'stune_train.yaml'))} --out DIR")


@app.command()
def report(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="Run directory of a sweep (local path or URI), finished, running or interrupted."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Folder for report.html and the PNGs (default RUN_DIR/report)."),
    top: int = typer.Option(10, "--top", metavar="N", min=1, help="Trials in the top-trials tables."),
    force: bool = typer.Option(False, "--force", help="Replace files of the report's names in --out that no stune report wrote."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Top trials in the terminal; an offline HTML report and PNG plots of the sweep."""
    _setup_logging(verbose)
    with _UserErrors():
        from tune.report import print_table, write_report

        result = write_report(run_dir, out, top=top, force=force)
    print_table(result["data"], top=top)
    for plot, why in result["placeholders"].items():
        typer.echo(f"{plot}.png: not drawn yet ({why})", err=True)
    typer.echo(f"report: {result['files']['html']}  (plots: {result['out']}/*.png)")


def _mount_cluster() -> None:
    from cluster.cli import app as cluster_app

    app.add_typer(cluster_app, name="cluster", help="Start, join, inspect and stop local Ray clusters.")


_mount_cluster()


def main() -> None:
    try:
        from typer._click import exceptions as click_errors  # typer vendors click
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_errors

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # bare `stune` / `stune cluster`: the help
        typer.echo(exc.format_message())
        code = 2
    except click_errors.UsageError as exc:  # a mistyped option or value: one line, like every other bad input
        where = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{where}", err=True)
        code = 2
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a sweep (a sweep says how to resume itself)
        code = 130
    exit_now(code if isinstance(code, int) else 0)


def exit_now(code: int) -> None:
    """Exit once the work is done, without Python's teardown of every module: with torch,
    sentence-transformers and Ray imported it took 2.2 s after the last output (0.5 s for torch
    alone), on every command. Exit handlers still run (logging, MLflow, Ray) and output is
    flushed first; a crash's traceback never gets here (it exits the usual way)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: nothing more can be shown anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
