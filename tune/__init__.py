"""stune sweep engine: Ray Tune + Optuna over losses and hyperparameters (CLI in tune.cli)."""


def sweep(*args, **kwargs):
    """See ``tune.sweep.sweep``."""
    from tune.sweep import sweep as _sweep

    return _sweep(*args, **kwargs)
