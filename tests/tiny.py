"""Builders for tests: a tiny random BERT SentenceTransformer and small data sets, all made
locally (no download)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

FAMILIES = {
    "software": ["software engineer", "backend developer", "python programmer", "web developer", "devops engineer"],
    "nursing": ["registered nurse", "staff nurse", "nurse practitioner", "clinical nurse", "charge nurse"],
    "finance": ["financial analyst", "accountant", "auditor", "tax advisor", "budget analyst"],
    "trades": ["electrician", "plumber", "carpenter", "welder", "pipe fitter"],
    "teaching": ["math teacher", "school teacher", "tutor", "lecturer", "teaching assistant"],
    "sales": ["sales representative", "account manager", "sales associate", "retail clerk", "cashier"],
}
GROUP = {"software": "tech", "finance": "tech", "nursing": "care", "teaching": "care", "trades": "field", "sales": "field"}
PREFIXES = ["senior", "junior", "lead", "chief", "assistant"]


def words() -> list[str]:
    vocab = set(PREFIXES) | {"role", "position", "with", "experience", "in"}
    for titles in FAMILIES.values():
        for title in titles:
            vocab.update(title.split())
    return sorted(vocab)


def make_tiny_model(path: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    import torch

    torch.manual_seed(0)
    raw = path.parent / (path.name + "-hf")
    raw.mkdir(parents=True, exist_ok=True)
    vocab = raw / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words()]) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab))  # vocab_file= is ignored by transformers 5
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(path))
    return path


def scored_pairs(n: int, seed: int) -> list[tuple[str, str, float]]:
    """Graded pairs: same family 1.0 / same group 0.5 / unrelated 0.0, with seniority noise."""
    rng = random.Random(seed)
    families = list(FAMILIES)
    rows = []
    for _ in range(n):
        fa = rng.choice(families)
        level = rng.choice([1.0, 0.5, 0.0])
        if level == 1.0:
            fb = fa
        elif level == 0.5:
            fb = rng.choice([f for f in families if GROUP[f] == GROUP[fa] and f != fa])
        else:
            fb = rng.choice([f for f in families if GROUP[f] != GROUP[fa]])
        a = f"{rng.choice(PREFIXES)} {rng.choice(FAMILIES[fa])}"
        b = rng.choice(FAMILIES[fb])
        rows.append((a, b, level))
    return rows


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_scored_data(folder: Path, n_train: int = 96, n_eval: int = 40) -> dict[str, str]:
    splits = {"train": (n_train, 1), "eval": (n_eval, 2), "test": (n_eval, 3)}
    return {
        name: str(write_csv(folder / f"{name}.csv", ["sentence1", "sentence2", "score"], scored_pairs(n, seed)))
        for name, (n, seed) in splits.items()
    }


def triplets_from(rows):
    """(anchor, positive, negative) from graded pairs: each positive gets an unrelated negative."""
    positives = [(a, b) for a, b, s in rows if s == 1.0]
    negatives = [b for _, b, s in rows if s == 0.0]
    return [(a, p, negatives[i % len(negatives)]) for i, (a, p) in enumerate(positives)]
