"""Where one MiniLM trial's time goes on this machine: three fine_tune calls in one process (as one
reused Ray actor runs them), the third under cProfile, then evaluate() timed on a fresh and a used model."""
import cProfile, json, os, sys, time
from pathlib import Path
sys.path.insert(0, "bench")
import common
from trainers.config import TrainConfig
from trainers.data import load_splits
from trainers.evaluation import evaluate
from trainers.model import load_model
from trainers.train import fine_tune

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
out = Path(os.environ.get("OUT", "/tmp/prof-out")); out.mkdir(parents=True, exist_ok=True)
work = Path("/tmp/prof-work"); work.mkdir(parents=True, exist_ok=True)
data = {"train": str(common.DEFAULT_DATA / "train.csv"), "eval": common.subset(common.DEFAULT_DATA / "eval.csv", 200, work / "eval.csv")}
cfg = TrainConfig(data=data, loss={"name": "CoSENTLoss", "scale": 20.0}, max_steps=steps, per_device_train_batch_size=64,
                  learning_rate=5e-5, warmup_ratio=0.1)
splits = load_splits(cfg)
timings = {}
for i in range(3):
    prof = cProfile.Profile() if i == 2 else None
    t = time.time()
    if prof: prof.enable()
    fine_tune(cfg, work / f"run{i}", splits=splits, evaluations=2, score_base=False, keep_best_model=False)
    if prof:
        prof.disable(); prof.dump_stats(str(out / "trial.prof"))
    timings[f"fine_tune_{i}_s"] = round(time.time() - t, 2)
    print(f"fine_tune {i}: {timings[f'fine_tune_{i}_s']} s", flush=True)
import torch
def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()
model = load_model(cfg.model, max_seq_length=cfg.max_seq_length)
for i in range(3):
    sync(); t = time.time(); evaluate(model, splits.eval, "eval"); sync()
    timings[f"evaluate_fresh_model_call{i}_s"] = round(time.time() - t, 3)
print(json.dumps(timings), flush=True)
(out / "profile_timings.json").write_text(json.dumps(timings, indent=1))
