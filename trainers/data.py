"""Read a split from disk and adapt it to the shape a loss needs.

Every file is first read as **scored pairs** ``(sentence1, sentence2, score in [0, 1])``:
- scored pairs are taken as they are (0–5 or 0–100 scales are normalized, with a note);
- triplets ``(anchor, positive, negative)`` become ``(anchor, positive, 1)`` and ``(anchor, negative, 0)``;
- positive pairs ``(anchor, positive)`` get one in-batch negative each: ``(anchor, other positive, 0)``.
Each loss shape is then derived from scored pairs (``adapt``), so one data set feeds every loss
and the evaluator always has graded pairs to compute ``spearman_cosine`` on.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from trainers.errors import DataError

log = logging.getLogger("stune.data")

# Common column names, first match wins; `data.columns` overrides any of them.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "anchor": ("anchor", "query", "question"),
    "positive": ("positive", "pos", "document", "passage", "answer"),
    "negative": ("negative", "neg", "hard_negative"),
    "sentence1": ("sentence1", "sentence_0", "sentence_a", "sentence", "text1", "text_a", "s1", "query", "premise"),
    "sentence2": ("sentence2", "sentence_1", "sentence_b", "text2", "text_b", "s2", "document", "hypothesis"),
    "score": ("score", "label", "similarity", "similarity_score", "relatedness", "labels", "gold"),
}


@dataclass
class ScoredPairs:
    sentence1: list[str]
    sentence2: list[str]
    score: list[float]

    def __len__(self) -> int:
        return len(self.score)


@dataclass
class Split:
    """One split read from disk: its scored pairs, plus the triplets it came as (if any)."""

    path: str
    source_shape: str  # scored_pairs | triplets | positive_pairs
    pairs: ScoredPairs
    triplets: list[tuple[str, str, str]] = field(default_factory=list)


CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: The files ``read_table`` reads (besides a ``datasets.save_to_disk`` folder).
READABLE_SUFFIXES = (*CSV_SUFFIXES, *JSON_SUFFIXES, *PARQUET_SUFFIXES)


def read_table(path: str) -> pa.Table:
    """CSV, TSV, JSON lines, Parquet, or a folder saved with ``datasets.save_to_disk``."""
    p = Path(path)
    if not p.exists():
        if _is_number(path):
            raise DataError(f"data file {path!r} not found; to hold out a share of data.train write it as a number "
                            f"(eval: {path}, without quotes)")
        raise DataError(f"data file {path!r} not found; check the path (relative paths are read next to the config)")
    try:
        if p.is_dir():
            import datasets

            dataset = datasets.load_from_disk(str(p))
            if isinstance(dataset, datasets.DatasetDict):
                raise DataError(f"{path}: is a DatasetDict; point data.train/eval/test at one split folder each")
            return dataset.data.table
        suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
        if p.stat().st_size == 0:
            raise DataError(f"{path}: file is empty; give it a header row and at least two rows")
        if suffix in CSV_SUFFIXES:
            import pyarrow.csv as pacsv

            header_line = _first_line(p)
            delimiter = "\t" if ".tsv" in suffix else ";" if ";" in header_line and "," not in header_line else ","
            header = _header_names(header_line, delimiter)
            _refuse_headerless(path, header_line, header)
            # Keep every column a string: scores are parsed below with messages that name the row.
            return pacsv.read_csv(
                p,
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types={name: pa.string() for name in header}),
            )
        if suffix == ".json" and (document := _json_document(p)) is not None:
            return document
        if suffix in JSON_SUFFIXES:
            import pyarrow.json as pajson

            return pajson.read_json(p)
        if suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return pq.read_table(p)
    except DataError:
        raise
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot be read ({first}); save it as UTF-8 CSV/TSV/JSONL/Parquet") from None
    raise DataError(f"{path}: unsupported file type {p.suffix!r}; use .csv, .tsv, .jsonl, .parquet or a datasets folder")


def _json_document(path: Path) -> pa.Table | None:
    """A .json file holding one document: a list of rows, or columns of equal length. None for JSON
    lines (one object per line), which pyarrow reads."""
    import json

    text = path.read_text(encoding="utf-8-sig")
    if not text.lstrip().startswith("["):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return None  # several objects: JSON lines
        if not (isinstance(document, dict) and document and all(isinstance(col, list) for col in document.values())):
            return None  # one object: a one-row JSON-lines file
        return pa.table(document)
    document = json.loads(text)
    if all(isinstance(row, dict) for row in document):
        return pa.Table.from_pylist(document)
    raise DataError(f"{path}: a JSON list of something other than rows; give rows like "
                    '[{"sentence1": ..., "sentence2": ..., "score": ...}] or one JSON object per line')


def _first_line(path: Path) -> str:
    """The header line of a CSV/TSV file, gzipped or not (a spreadsheet's byte-order mark dropped)."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            return fh.readline()
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; re-save it as UTF-8") from None


def _refuse_headerless(path: str, header_line: str, header: list[str]) -> None:
    """A CSV whose first line is a data row would lose that row to the header, silently: a number
    is never a column name, so a first line holding one has no header."""
    if any(_is_number(name.strip()) for name in header):
        first = header_line.strip()
        first = first if len(first) <= 60 else first[:57] + "..."
        raise DataError(f"{path}: the first line ({first!r}) is a data row, not column names; "
                        "add a header row such as sentence1,sentence2,score")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ".", 1))
    except ValueError:
        return False
    return True


def _header_names(header_line: str, delimiter: str) -> list[str]:
    """The column names of a CSV's first line (semicolon-separated: what spreadsheets save in many locales)."""
    import csv

    return [name.strip("\r\n") for name in next(csv.reader([header_line], delimiter=delimiter), [])]


def _pick_columns(table: pa.Table, mapping: dict[str, str], path: str) -> tuple[str, dict[str, str]]:
    """Which shape the table has and which column plays which role."""
    names = table.column_names
    for role, column in mapping.items():
        if column not in names:
            raise DataError(
                f"{path}: data.columns.{role} names column {column!r}, which is not in the file "
                f"(columns: {', '.join(names)})"
            )

    def find(role: str, taken: set[str]) -> str | None:
        if role in mapping:
            return mapping[role]
        return next((c for c in COLUMN_ALIASES[role] if c in names and c not in taken), None)

    cols: dict[str, str] = {}
    anchor = find("anchor", set())
    positive = find("positive", {anchor} if anchor else set())
    negative = find("negative", {anchor, positive} - {None})
    if anchor and positive and negative and not {"sentence1", "sentence2", "score"} & set(mapping):
        return "triplets", {"anchor": anchor, "positive": positive, "negative": negative}
    s1 = find("sentence1", set()) or anchor
    s2 = find("sentence2", {s1}) or (positive if positive != s1 else None)
    positional = False
    if not s1 or not s2 or s1 == s2:
        if len(names) >= 2 and not mapping:
            # Unnamed columns: by position, like sentence-transformers does.
            s1, s2, positional = names[0], names[1], True
        else:
            raise DataError(
                f"{path}: cannot find two text columns (columns: {', '.join(names)}); "
                "name them sentence1/sentence2 or set data.columns"
            )
    cols = {"sentence1": s1, "sentence2": s2}
    score = find("score", {s1, s2})
    if score is None and len(names) >= 3 and not mapping and names[2] not in (s1, s2):
        if positional and not _looks_numeric(table.column(names[2])):
            # Three unnamed text columns: (anchor, positive, negative), as sentence-transformers reads them.
            return "triplets", {"anchor": names[0], "positive": names[1], "negative": names[2]}
        score = names[2]
    if score is not None:
        cols["score"] = score
        return "scored_pairs", cols
    return "positive_pairs", cols


def _looks_numeric(column) -> bool:
    """Whether a column's first values are numbers (a score), not text."""
    for value in column.slice(0, 20).to_pylist():
        if isinstance(value, str) and not _is_number(value):
            return False
    return True


def _where(path: str, index: int) -> str:
    """Row ``index`` (0-based) as a user finds it: the row in a spreadsheet (its header is row 1),
    the line of a JSON-lines file, or the index ``datasets``/pandas give a Parquet or datasets row."""
    name = path.lower()
    if name.endswith(CSV_SUFFIXES):
        return f"row {index + 2}"
    if name.endswith(JSON_SUFFIXES):
        return f"line {index + 1}"
    return f"row index {index}"


def _texts(table: pa.Table, column: str, path: str) -> list[str]:
    values = table.column(column).to_pylist()
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}: {_where(path, index)}, column {column!r} is empty or not text; fill or drop that row")
    return values


def _scores(table: pa.Table, column: str, path: str) -> list[float]:
    scores = []
    for index, value in enumerate(table.column(column).to_pylist()):
        row = _where(path, index)
        if isinstance(value, str) and "," in value and "." not in value:
            value = value.replace(",", ".", 1)  # a decimal comma, as spreadsheets in many locales write it
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {row}, score column {column!r} holds {value!r}, not a number; fix or drop that row") from None
        if score != score or score in (float("inf"), float("-inf")):
            raise DataError(f"{path}: {row}, score column {column!r} is {value!r}; scores must be finite numbers")
        scores.append(score)
    return scores


def normalize_scores(scores: list[float], path: str) -> list[float]:
    """Bring 0–1, 0–5 and 0–100 scales to [0, 1]; refuse anything else."""
    low, high = min(scores), max(scores)
    if low < 0:
        raise DataError(f"{path}: scores go below 0 (min {low:g}); use similarity scores on a 0–1, 0–5 or 0–100 scale")
    for scale in (1.0, 5.0, 100.0):
        if high <= scale:
            if scale != 1.0:
                log.warning("%s: scores range %g–%g; read as a 0–%g scale and divided by %g", path, low, high, scale, scale)
            return [s / scale for s in scores]
    raise DataError(f"{path}: scores go up to {high:g}; use a 0–1, 0–5 or 0–100 scale")


def read_split(path: str, columns: dict[str, str] | None = None, *, seed: int = 42, max_rows: int | None = None,
               part: tuple[str, dict[str, float]] | None = None) -> Split:
    """Read one split as scored pairs (see module docstring). ``part=("eval", {"eval": 0.1})``
    reads the share of the file held out as that split; ``("train", ...)`` what is left of it."""
    table = read_table(path)
    if max_rows is not None and table.num_rows > max_rows:
        table = table.slice(0, max_rows)
    if table.num_rows < 2:
        raise DataError(f"{path}: has {table.num_rows} data row(s); a split needs at least 2")
    shape, cols = _pick_columns(table, columns or {}, path)
    # Every row is checked, with its row number in the file, before a part of them is kept.
    if shape == "triplets":
        texts = {role: _texts(table, cols[role], path) for role in ("anchor", "positive", "negative")}
        scores = None
    else:
        texts = {role: _texts(table, cols[role], path) for role in ("sentence1", "sentence2")}
        scores = normalize_scores(_scores(table, cols["score"], path), path) if shape == "scored_pairs" else None
    label = path
    if part is not None:
        which, shares = part
        keep = held_out_rows(next(iter(texts.values())), shares)[which]
        texts = {role: [values[i] for i in keep] for role, values in texts.items()}
        scores = None if scores is None else [scores[i] for i in keep]
        label = part_label(path, which, shares)
        if len(keep) < 2:
            first = next(iter(texts))
            raise DataError(f"{label}: holds {len(keep)} row(s), a split needs at least 2; "
                            f"{'hold out less' if which == 'train' else 'hold out more'} or give a file "
                            f"(rows are held out by their {cols[first]!r} text, one text's rows together)")
    if shape == "triplets":
        triplets = list(zip(texts["anchor"], texts["positive"], texts["negative"]))
        s1, s2, sc = [], [], []
        seen: set[tuple[str, str]] = set()
        for anchor, pos, neg in triplets:
            for other, score in ((pos, 1.0), (neg, 0.0)):
                if (anchor, other) not in seen:
                    seen.add((anchor, other))
                    s1.append(anchor), s2.append(other), sc.append(score)
        return Split(label, shape, ScoredPairs(s1, s2, sc), triplets)
    s1, s2 = texts["sentence1"], texts["sentence2"]
    if scores is not None:
        return Split(label, shape, ScoredPairs(s1, s2, scores))
    # Positive pairs only: pair each anchor with another row's positive as its negative.
    rng = random.Random(seed)
    negatives = _other_positive(s1, s2, rng)
    return Split(label, shape, ScoredPairs(s1 + s1, s2 + negatives, [1.0] * len(s1) + [0.0] * len(s1)))


def held_out_rows(keys: list[str], shares: dict[str, float]) -> dict[str, list[int]]:
    """Row indices of each held-out split and of ``train`` (the rest), in file order.

    Rows sharing a key (their first text) stay together, so no text of eval or test is an
    anchor seen in training; groups are taken in the order of a hash of the key until each
    split has its share of the rows, so the split depends on the texts alone."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = sorted(groups, key=lambda key: hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest())
    taken: dict[str, list[int]] = {name: [] for name in ("eval", "test") if name in shares}
    pending = iter(order)
    for name in taken:
        target = round(shares[name] * len(keys))
        for key in pending:
            taken[name].extend(groups[key])
            if len(taken[name]) >= target:
                break
    taken["train"] = [i for key in pending for i in groups[key]]
    return {name: sorted(rows) for name, rows in taken.items()}


def part_label(path: str, which: str, shares: dict[str, float]) -> str:
    """How a held-out split, or the train split left after it, is named in messages."""
    if which == "train":
        return f"{path} (less the {' and '.join(f'{share:.0%} held out as {name}' for name, share in shares.items())})"
    return f"{path} ({shares[which]:.0%} held out as {which})"


def _other_positive(anchors: list[str], positives: list[str], rng: random.Random) -> list[str]:
    is_positive = set(zip(anchors, positives))
    out = []
    for anchor in anchors:
        for _ in range(20):
            candidate = positives[rng.randrange(len(positives))]
            if (anchor, candidate) not in is_positive:
                break
        out.append(candidate)
    return out


def adapt(pairs: ScoredPairs, shape: str, *, positive_threshold: float = 0.75, seed: int = 42) -> tuple[dict[str, list[Any]], str]:
    """Scored pairs -> the columns a loss of ``shape`` reads, and a one-line note of what was done."""
    n = len(pairs)
    if shape == "scored_pairs":
        return {"sentence1": pairs.sentence1, "sentence2": pairs.sentence2, "score": pairs.score}, f"{n} scored pairs"
    if shape == "labeled_pairs":
        labels = [int(s >= positive_threshold) for s in pairs.score]
        if len(set(labels)) < 2:
            raise DataError(f"every pair falls on one side of data.positive_threshold={positive_threshold}; adjust it")
        note = f"{n} pairs labelled 1 where score >= {positive_threshold} ({sum(labels)} positives)"
        return {"sentence1": pairs.sentence1, "sentence2": pairs.sentence2, "label": labels}, note
    positives = [(a, b) for a, b, s in zip(pairs.sentence1, pairs.sentence2, pairs.score) if s >= positive_threshold]
    if len(positives) < 2:
        raise DataError(f"fewer than 2 pairs have score >= data.positive_threshold={positive_threshold}; lower it")
    if shape == "positive_pairs":
        anchors, pos = map(list, zip(*positives))
        return {"anchor": anchors, "positive": pos}, f"{len(positives)} positive pairs (score >= {positive_threshold}) of {n}"
    if shape == "triplets":
        return _triplets(pairs, positives, positive_threshold, seed)
    raise ValueError(f"unknown shape {shape}")


def _triplets(pairs: ScoredPairs, positives, threshold: float, seed: int):
    # Hard negatives come from the data itself (same anchor, low score); anchors without one
    # get an in-batch negative: another anchor's positive.
    rng = random.Random(seed)
    hard: dict[str, list[str]] = {}
    for a, b, s in zip(pairs.sentence1, pairs.sentence2, pairs.score):
        if s < threshold:
            hard.setdefault(a, []).append(b)
    positive_set = set(positives)
    all_positives = [p for _, p in positives]
    anchors, pos, neg = [], [], []
    n_hard = 0
    for i, (a, p) in enumerate(positives):
        if hard.get(a):
            negative = hard[a][i % len(hard[a])]
            n_hard += 1
        else:
            negative = next(
                (c for c in (all_positives[rng.randrange(len(all_positives))] for _ in range(20)) if (a, c) not in positive_set),
                all_positives[rng.randrange(len(all_positives))],
            )
        anchors.append(a), pos.append(p), neg.append(negative)
    note = f"{len(anchors)} triplets from pairs with score >= {threshold} ({n_hard} hard negatives from the data, the rest in-batch)"
    return {"anchor": anchors, "positive": pos, "negative": neg}, note


@dataclass
class Splits:
    train: Split
    eval: Split
    test: Split | None


def config_split(config, which: str) -> Split:
    """Split ``which`` (train, eval or test) of a ``TrainConfig``'s data (its columns, seed,
    ``max_rows`` and held-out shares), as training and selection saw it: export and the baseline
    score on these same rows."""
    data = config.data
    shares = data.held_out()
    source = getattr(data, which)
    if isinstance(source, float) or (which == "train" and shares):
        return read_split(data.train, data.columns, seed=config.seed, max_rows=data.max_rows, part=(which, shares))
    return read_split(source, data.columns, seed=config.seed, max_rows=data.max_rows)


def load_splits(config, *, with_test: bool = True) -> Splits:
    """The train/eval/test splits of a ``TrainConfig``, each read as scored pairs."""
    data = config.data
    test = config_split(config, "test") if with_test and data.test else None
    splits = Splits(config_split(config, "train"), config_split(config, "eval"), test)
    for key, split in (("data.eval", splits.eval), ("data.test", splits.test)):
        if split is not None and len(set(split.pairs.score)) < 2:  # spearman of a constant is undefined (NaN)
            raise DataError(f"{key} {split.path}: every pair has score {split.pairs.score[0]:g}, so spearman_cosine cannot rank "
                            "them; give it pairs with different scores (e.g. unrelated pairs scored 0)")
    return splits
