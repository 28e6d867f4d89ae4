"""stune sweep engine: Ray Tune + Optuna over losses and hyperparameters (CLI in tune.cli).

From Python (a notebook): ``from tune import sweep, export``."""


def sweep(*args, **kwargs):
    """See ``tune.engine.sweep``."""
    from tune.engine import sweep as _sweep

    return _sweep(*args, **kwargs)


def export(run_dir: str, out: str, *, force: bool = False, mlflow: str | None = None) -> dict:
    """The sweep's best checkpoint as a SentenceTransformer folder with a model card and its
    ``stune_train.yaml``, as ``stune export``; returns its eval (and test) scores."""
    from tune.exporter import export_best

    return export_best(run_dir, out, force=force, mlflow=mlflow)
