"""Reading every file format, detecting columns, adapting one data set to every loss shape."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiny import scored_pairs, triplets_from, write_csv
from trainers.data import adapt, read_split
from trainers.errors import DataError

ROWS = scored_pairs(30, seed=7)


def test_csv_scored_pairs(tmp_path):
    split = read_split(str(write_csv(tmp_path / "d.csv", ["sentence1", "sentence2", "score"], ROWS)))
    assert split.source_shape == "scored_pairs"
    assert len(split.pairs) == 30
    assert split.pairs.score == [r[2] for r in ROWS]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet", "datasets"])
def test_other_formats_read_the_same_pairs(fmt, tmp_path):
    cols = {"sentence1": [r[0] for r in ROWS], "sentence2": [r[1] for r in ROWS], "score": [r[2] for r in ROWS]}
    if fmt == "tsv":
        path = tmp_path / "d.tsv"
        path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in ROWS))
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in ROWS))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(pa.table(cols), path)
    else:
        import datasets

        path = tmp_path / "d_ds"
        datasets.Dataset.from_dict(cols).save_to_disk(str(path))
    split = read_split(str(path))
    assert split.pairs.sentence1 == cols["sentence1"]
    assert split.pairs.score == pytest.approx(cols["score"])


def test_column_aliases_and_explicit_mapping(tmp_path):
    seed_style = write_csv(tmp_path / "a.csv", ["sentence_0", "sentence_1", "label"], ROWS)
    assert read_split(str(seed_style)).source_shape == "scored_pairs"
    custom = write_csv(tmp_path / "b.csv", ["title", "role", "sim"], ROWS)
    split = read_split(str(custom), {"sentence1": "title", "sentence2": "role", "score": "sim"})
    assert split.pairs.sentence2 == [r[1] for r in ROWS]
    with pytest.raises(DataError, match="data.columns.score names column 'nope'"):
        read_split(str(custom), {"sentence1": "title", "sentence2": "role", "score": "nope"})


def test_scales_are_normalized_with_a_note(tmp_path, caplog):
    rows = [(a, b, s * 5) for a, b, s in ROWS]
    split = read_split(str(write_csv(tmp_path / "d.csv", ["sentence1", "sentence2", "score"], rows)))
    assert max(split.pairs.score) == 1.0
    assert "0–5 scale" in caplog.text
    rows100 = [(a, b, s * 100) for a, b, s in ROWS]
    assert max(read_split(str(write_csv(tmp_path / "e.csv", ["sentence1", "sentence2", "score"], rows100))).pairs.score) == 1.0


def test_triplets_become_scored_pairs_and_back(tmp_path):
    triplets = triplets_from(ROWS)
    split = read_split(str(write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], triplets)))
    assert split.source_shape == "triplets"
    assert split.triplets == triplets
    assert set(split.pairs.score) == {0.0, 1.0}
    columns, _ = adapt(split.pairs, "triplets")
    # Hard negatives come back from the data: each anchor's own negatives.
    own_negatives = {(a, n) for a, _, n in triplets}
    assert all((a, n) in own_negatives for a, n in zip(columns["anchor"], columns["negative"]))


def test_positive_pairs_get_in_batch_negatives_for_evaluation(tmp_path):
    positives = [(a, b) for a, b, s in ROWS if s == 1.0]
    split = read_split(str(write_csv(tmp_path / "p.csv", ["anchor", "positive"], positives)))
    assert split.source_shape == "positive_pairs"
    assert split.pairs.score.count(1.0) == len(positives) == split.pairs.score.count(0.0)
    assert all((a, b) not in set(positives) for a, b, s in zip(split.pairs.sentence1, split.pairs.sentence2, split.pairs.score) if s == 0.0)


@pytest.mark.parametrize("shape", ["scored_pairs", "positive_pairs", "triplets", "labeled_pairs"])
@pytest.mark.parametrize("source", ["scored", "triplets", "positives"])
def test_every_shape_from_every_source(shape, source, tmp_path):
    if source == "scored":
        path = write_csv(tmp_path / "s.csv", ["sentence1", "sentence2", "score"], ROWS)
    elif source == "triplets":
        path = write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], triplets_from(ROWS))
    else:
        path = write_csv(tmp_path / "p.csv", ["anchor", "positive"], [(a, b) for a, b, s in ROWS if s == 1.0])
    columns, note = adapt(read_split(str(path)).pairs, shape, positive_threshold=0.75)
    expected = {"scored_pairs": ["sentence1", "sentence2", "score"], "positive_pairs": ["anchor", "positive"],
                "triplets": ["anchor", "positive", "negative"], "labeled_pairs": ["sentence1", "sentence2", "label"]}[shape]
    assert list(columns) == expected
    n = len(columns[expected[0]])
    assert n >= 2 and all(len(v) == n for v in columns.values())
    assert note
    if shape == "labeled_pairs":
        assert set(columns["label"]) == {0, 1}
    if shape == "triplets":
        assert all(p != neg for p, neg in zip(columns["positive"], columns["negative"]))


def test_positive_pairs_from_scores_respect_the_threshold():
    split_pairs = read_split.__globals__["ScoredPairs"](["a", "b", "c"], ["x", "y", "z"], [0.9, 0.5, 0.8])
    columns, _ = adapt(split_pairs, "positive_pairs", positive_threshold=0.75)
    assert columns == {"anchor": ["a", "c"], "positive": ["x", "z"]}
    with pytest.raises(DataError, match="positive_threshold"):
        adapt(split_pairs, "positive_pairs", positive_threshold=0.95)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"sentence1,sentence2,score\na,b,0.5\n", "at least 2"),
        (b"sentence1,sentence2,score\na,b,high\nc,d,0.1\n", "row 2, score column 'score' holds 'high', not a number"),
        (b"sentence1,sentence2,score\na,b,-1\nc,d,0.1\n", "below 0"),
        (b"sentence1,sentence2,score\na,b,500\nc,d,0.1\n", "0–100 scale"),
        (b"sentence1,sentence2,score\na,,0.5\nc,d,0.1\n", "row 2, column 'sentence2' is empty"),
        (b"sentence1,sentence2,score\n\xff\xfe,b,0.5\nc,d,0.1\n", "UTF-8"),
        (b"only\na\nb\n", "cannot find two text columns"),
    ],
)
def test_bad_data_is_refused_with_a_message(content, message, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_split(str(path))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_split(str(tmp_path / "nope.csv"))
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_split(str(tmp_path / "d.xlsx"))


def test_a_bad_row_is_named_where_the_user_finds_it(tmp_path):
    """A spreadsheet row for CSV (header is row 1), a line for JSON lines, the 0-based index for Parquet."""

    rows = [{"sentence1": "a", "sentence2": "b", "score": 0.5}, {"sentence1": "c", "sentence2": "", "score": 0.1}]
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="line 2, column 'sentence2' is empty"):
        read_split(str(jsonl))
    with pytest.raises(DataError, match="row index 1, column 'sentence2' is empty"):
        read_split(str(tmp_path / "bad.parquet"))


def test_spreadsheet_exports_read_as_written(tmp_path):
    """A gzipped CSV, a spreadsheet's semicolon-separated CSV with decimal commas, and a CSV with a
    byte-order mark (Excel's "CSV UTF-8") all read as the plain CSV does."""
    import gzip

    rows = scored_pairs(12, seed=4)
    plain = read_split(str(write_csv(tmp_path / "plain.csv", ["sentence1", "sentence2", "score"], rows)))
    text = (tmp_path / "plain.csv").read_text()
    (tmp_path / "zipped.csv.gz").write_bytes(gzip.compress(text.encode()))
    semicolons = "sentence1;sentence2;score\n" + "".join(f"{a};{b};{str(s).replace('.', ',')}\n" for a, b, s in rows)
    (tmp_path / "semicolons.csv").write_text(semicolons)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    for name in ("zipped.csv.gz", "semicolons.csv", "bom.csv"):
        split = read_split(str(tmp_path / name))
        assert split.source_shape == "scored_pairs", name
        assert split.pairs == plain.pairs, name


def test_a_json_document_reads_as_json_lines_do(tmp_path):
    """A .json file may hold a list of rows or a mapping of columns (pandas' and datasets' exports),
    besides one object per line."""
    rows = [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in scored_pairs(12, seed=4)]
    (tmp_path / "lines.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "columns.json").write_text(json.dumps({key: [row[key] for row in rows] for key in rows[0]}))
    expected = read_split(str(tmp_path / "lines.json")).pairs
    assert read_split(str(tmp_path / "rows.json")).pairs == expected
    assert read_split(str(tmp_path / "columns.json")).pairs == expected
    (tmp_path / "numbers.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="a JSON list of something other than rows"):
        read_split(str(tmp_path / "numbers.json"))


def test_three_unnamed_text_columns_are_triplets(tmp_path):
    """As sentence-transformers reads them: (anchor, positive, negative) by position, when the third
    column holds text; a numeric third column stays the score."""
    triplets = triplets_from(scored_pairs(60, seed=2))
    split = read_split(str(write_csv(tmp_path / "t.csv", ["q", "p", "n"], triplets)))
    assert split.source_shape == "triplets" and split.triplets == [tuple(t) for t in triplets]
    scored = read_split(str(write_csv(tmp_path / "s.csv", ["a", "b", "c"], scored_pairs(10, seed=2))))
    assert scored.source_shape == "scored_pairs"


def _held_out_splits(path, seed=42, **data):
    from trainers.config import TrainConfig
    from trainers.data import load_splits

    return load_splits(TrainConfig(data={"train": str(path), **data}, seed=seed))


def _rows(split):
    return sorted(zip(split.pairs.sentence1, split.pairs.sentence2, split.pairs.score))


def test_eval_and_test_held_out_of_one_file_keep_each_text_on_one_side(tmp_path):
    import random

    # 20 first texts with 3 rows each: a text's rows must stay together
    rows = [(f"title {i}", f"role {i}-{j}", (i * 3 + j) % 7 / 6) for i in range(20) for j in range(3)]
    splits = _held_out_splits(write_csv(tmp_path / "all.csv", ["sentence1", "sentence2", "score"], rows), eval=0.2, test=0.1)
    train, held_eval, held_test = (_rows(s) for s in (splits.train, splits.eval, splits.test))
    assert sorted(train + held_eval + held_test) == sorted(rows)  # every row once, none lost
    assert (len(held_eval), len(held_test)) == (12, 6)  # 20 % and 10 % of 60, in whole groups of 3
    firsts = [{s1 for s1, _, _ in part} for part in (train, held_eval, held_test)]
    assert not (firsts[0] & firsts[1] or firsts[0] & firsts[2] or firsts[1] & firsts[2])
    assert "held out as eval" in splits.eval.path and "less the 20% held out as eval" in splits.train.path
    # the same split whatever the row order and the seed: sweeps and exports on other machines agree
    random.Random(1).shuffle(rows)
    again = _held_out_splits(write_csv(tmp_path / "shuffled.csv", ["sentence1", "sentence2", "score"], rows),
                             eval=0.2, test=0.1, seed=7)
    assert (_rows(again.eval), _rows(again.test)) == (held_eval, held_test)


def test_positive_pairs_held_out_draw_negatives_inside_their_split(tmp_path):
    rows = [(f"anchor {i}", f"positive {i}") for i in range(40)]
    splits = _held_out_splits(write_csv(tmp_path / "pos.csv", ["anchor", "positive"], rows), eval=0.25)
    eval_texts = {a for a in splits.eval.pairs.sentence1} | set(splits.eval.pairs.sentence2)
    assert len(splits.eval.pairs) == 2 * 10 and sorted(splits.eval.pairs.score) == [0.0] * 10 + [1.0] * 10
    assert all(text.split()[1] in {a.split()[1] for a in splits.eval.pairs.sentence1} for text in eval_texts)
    assert not set(splits.train.pairs.sentence2) & set(splits.eval.pairs.sentence2)
