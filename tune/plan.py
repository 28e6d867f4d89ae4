"""``stune sweep --dry-run``: what a sweep would do, from the config alone (nothing run or written).

The data are read and the model folder checked, so a plan that prints is a sweep that starts."""

from __future__ import annotations

from tune.config import SweepConfig, parse_duration
from tune.space import SearchSpace, describe_dimension, fit_losses_to_data, initial_point_params, recipe_point


def trial_length(config: SweepConfig, space: SearchSpace) -> str:
    for name in ("max_steps", "num_train_epochs"):
        if name in space.training_dims:
            return f"{name} searched: {describe_dimension(space.training_dims[name])}"
    if config.max_steps and config.max_steps > 0:
        return f"{config.max_steps} steps"
    return f"{config.num_train_epochs:g} epoch(s)"


def plan_lines(config: SweepConfig, splits, model_path: str, *, out: str) -> list[str]:
    config, unfit = fit_losses_to_data(config, splits.train.pairs)
    space = SearchSpace(config)
    pairs = {"train": splits.train, "eval": splits.eval, "test": splits.test}
    data = ", ".join(f"{name} {split.path} ({len(split.pairs)} pairs)" for name, split in pairs.items() if split is not None)
    gpus = "1 GPU if the cluster has GPUs, else none" if config.gpus_per_trial is None else f"{config.gpus_per_trial:g} GPU"
    budget = f"; time budget {config.time_budget} ({parse_duration(config.time_budget):.0f} s)" if config.time_budget else ""
    startup = f" ({config.random_startup_trials} random trials first)" if config.searcher != "random" else ""
    scheduler = (f"asha (a trial may be stopped after {config.grace_period} of its evaluations; "
                 f"the top 1/{config.asha.reduction_factor:g} go on at each rung)" if config.scheduler == "asha" else "none")
    evaluations = (f"an evaluation every {config.eval_steps} steps" if config.evaluations is None else
                   f"{config.evaluations} evaluation{'s' if config.evaluations > 1 else ''}")
    gradient_cache = (f"; gradient caching: at most {config.gradient_cache_mini_batch_size} texts embedded at once"
                      if config.gradient_cache_mini_batch_size else "")
    lines = [
        "sweep plan (--dry-run: nothing is run or written)",
        f"  run dir:   {out}",
        f"  model:     {model_path}",
        f"  data:      {data}",
        f"  trials:    {config.trials}, {config.max_concurrent_trials} at a time, each on {config.cpus_per_trial:g} CPU "
        f"and {gpus}{budget}",
        f"  per trial: {trial_length(config, space)}, {evaluations} of eval spearman_cosine, "
        f"a checkpoint at each{gradient_cache}",
        f"  searcher:  {config.searcher}{startup}; scheduler: {scheduler}",
        "  baseline:  the first trial scores the untuned model on eval before it trains",
    ]
    if config.initial_points is None:
        point = recipe_point(config, space)
        if point:
            lines.append("  first trial: the config's own recipe: " + ", ".join(f"{k}={v}" for k, v in point.items()))
    else:
        for i, raw in enumerate(config.initial_points):
            point = initial_point_params(raw, config.loss.name)
            lines.append(f"  initial point {i + 1}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
    for change in space.widened:
        lines.append(f"  widened to hold the config's own value: {change}")
    for loss, why in unfit.items():
        lines.append(f"  left out: {loss}, which cannot train on data.train ({why})")
    lines.append("  search space:")
    lines.append(f"    loss: {describe_dimension(space.losses)}")
    for loss in space.losses:
        for name, dim in space.loss_dims[loss].items():
            lines.append(f"    {loss}.{name}: {describe_dimension(dim)}")
    for name, dim in space.training_dims.items():
        lines.append(f"    {name}: {describe_dimension(dim)}")
    return lines
