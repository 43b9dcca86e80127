"""Datasets as tables (data/tables.py): CSV/TSV, JSON lines and DataFrames read into the folder scan's
DatasetScan, multi-label rows, splits, every bad-table case, and every verb through a table."""
from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.core.errors import DatasetError
from transferlab.data.folders import scan_dataset
from transferlab.data.images import find_images
from transferlab.data.samples import Sample, iterative_split
from transferlab.data.tables import Table, as_table, dataset_name, recorded_data

from conftest import write_digit_folder


def write_images(folder: Path, names, size: int = 16) -> list[Path]:
    """Small real PNG/JPEG files (each a different flat colour)."""
    out = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(path)
        out.append(path)
    return out


def write_csv(path: Path, header, rows, delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def labelled(tmp_path: Path, per_class: int = 4, classes=("cat", "dog")) -> list[tuple[str, str]]:
    """(relative path, label) rows of real images under tmp_path/img."""
    rows = []
    for c in classes:
        names = [f"img/{c}_{i}.png" for i in range(per_class)]
        write_images(tmp_path, names)
        rows += [(n, c) for n in names]
    return rows


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def reasons(scan) -> str:
    return "\n".join(f"{p}: {why}" for p, why in scan.skipped)


# --- reading ------------------------------------------------------------------------------------------


def test_a_csv_of_a_folder_scans_like_the_folder(digits_folder, tmp_path):
    folder = scan_dataset(digits_folder, seed=3)
    rows = [(str(p.resolve()), p.parent.name) for p in digits_folder.rglob("*.png")]
    random.Random(0).shuffle(rows)  # the table's row order does not matter
    table = scan_dataset(write_csv(tmp_path / "digits.csv", ["image", "label"], rows), seed=3)
    assert table.classes == folder.classes and not table.skipped and not table.multilabel
    for split in ("train", "val"):
        assert [(s.path.resolve(), s.label) for s in table.splits[split]] == \
               [(s.path.resolve(), s.label) for s in folder.splits[split]]
    assert table.split_source == folder.split_source == "random 80%/20% split, seed 3"
    assert table.to_dict()["table"]["format"] == "csv"


def test_relative_paths_start_at_the_table_folder_and_absolute_ones_are_kept(tmp_path):
    rows = labelled(tmp_path / "set")
    elsewhere = write_images(tmp_path / "other", ["far.png"])[0]
    rows.append((str(elsewhere), "dog"))
    table = write_csv(tmp_path / "set" / "labels.csv", ["image", "label"], rows)
    scan = scan_dataset(table, require_val=False)
    paths = {s.path.resolve() for s in scan.splits["train"]}
    assert elsewhere.resolve() in paths and (tmp_path / "set" / "img" / "cat_0.png").resolve() in paths
    assert len(paths) == 9 and not scan.skipped
    assert dataset_name(table) == "set"  # a generic file name: its folder's
    assert dataset_name(tmp_path / "set" / "pets.csv") == "pets"


@pytest.mark.parametrize("header, fmt", [(("filename", "category"), "tsv"), (("file", "class"), "csv"),
                                         (("path", "target"), "jsonl"), (("img", "tags"), "ndjson")])
def test_columns_are_found_by_their_common_names(tmp_path, header, fmt):
    rows = labelled(tmp_path)
    if fmt in ("jsonl", "ndjson"):
        table = tmp_path / f"t.{fmt}"
        table.write_text("".join(json.dumps({"id": i, header[0]: p, header[1]: c}) + "\n"
                                 for i, (p, c) in enumerate(rows)))
    else:
        table = write_csv(tmp_path / f"t.{fmt}", header, rows, "\t" if fmt == "tsv" else ",")
    scan = scan_dataset(table, val_split=0.25)
    assert scan.classes == ["cat", "dog"] and len(scan.splits["train"]) == 6 and len(scan.splits["val"]) == 2
    assert scan.table["image_col"] == header[0] and scan.table["label_col"] == header[1]


def test_a_semicolon_csv_is_sniffed_and_columns_can_be_given(tmp_path):
    rows = labelled(tmp_path)
    table = write_csv(tmp_path / "t.csv", ["Bild", "Art", "note"], [(p, c, "x") for p, c in rows], ";")
    with pytest.raises(DatasetError, match="no image column .*--image-col"):
        scan_dataset(table)
    scan = scan_dataset(Table(table, image_col="bild", label_col="Art"), require_val=False)
    assert scan.classes == ["cat", "dog"] and len(scan.splits["train"]) == 8


def test_a_json_list_of_labels_and_one_label_per_cell(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "a.png", "labels": ["golden retriever", "cat"]}\n'
                     '{"image": "b.png", "labels": ["cat"]}\n'
                     '{"image": "c.png", "labels": "golden retriever"}\n'
                     '{"image": "d.png", "labels": "cat"}\n')
    scan = scan_dataset(table, require_val=False, multilabel=True)
    assert scan.multilabel and scan.classes == ["cat", "golden", "golden retriever", "retriever"]
    # a cell holding one label with a space in it: --label-delim none
    write_csv(tmp_path / "s.csv", ["image", "label"], [("a.png", "golden retriever"), ("b.png", "cat"),
                                                         ("c.png", "golden retriever"), ("d.png", "cat")])
    with pytest.raises(DatasetError, match="multi-label table .*--label-delim none"):
        scan_dataset(tmp_path / "s.csv")
    scan = scan_dataset(Table(tmp_path / "s.csv", label_delim="none"), require_val=False)
    assert not scan.multilabel and scan.classes == ["cat", "golden retriever"]


def test_a_dataframe_is_a_table(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = labelled(tmp_path)
    df = pd.DataFrame({"file": [p for p, _ in rows], "label": [c for _, c in rows],
                       "split": ["train", "train", "val", "test"] * 2})
    scan = scan_dataset(Table(df, root=tmp_path))
    assert {k: len(v) for k, v in scan.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert scan.split_source == "split column 'split'" and scan.table["format"] == "dataframe"
    assert dataset_name(df) == "dataframe"
    with pytest.raises(DatasetError, match="DataFrame"):
        recorded_data(scan.to_dict())
    # multi-label from a DataFrame of lists, relative to the working folder
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        ml = pd.DataFrame({"image": [p for p, _ in rows], "tags": [[c, "pet"] if i % 2 else [c]
                                                                   for i, (_, c) in enumerate(rows)]})
        scan = scan_dataset(ml, multilabel=True)
    finally:
        os.chdir(old)
    assert scan.multilabel and scan.classes == ["cat", "dog", "pet"]


# --- splits -------------------------------------------------------------------------------------------


def test_the_split_column(tmp_path):
    rows = labelled(tmp_path, per_class=5)
    splits = ["train", "Train", "valid", "test", "training"]
    table = write_csv(tmp_path / "t.csv", ["image", "label", "split"],
                      [(p, c, splits[i % 5]) for i, (p, c) in enumerate(rows)])
    scan = scan_dataset(table)
    assert {k: len(v) for k, v in scan.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert scan.split_source == "split column 'split'"
    # fastai's is_valid flag
    table = write_csv(tmp_path / "f.csv", ["image", "label", "is_valid"],
                      [(p, c, "True" if i % 5 == 0 else "False") for i, (p, c) in enumerate(rows)])
    assert {k: len(v) for k, v in scan_dataset(table).splits.items()} == {"train": 8, "val": 2}


def test_a_validation_table(tmp_path):
    rows = labelled(tmp_path, per_class=5)
    train = write_csv(tmp_path / "train.csv", ["image", "label"], [r for i, r in enumerate(rows) if i % 5])
    val = write_csv(tmp_path / "val.csv", ["image", "label"], [r for i, r in enumerate(rows) if not i % 5])
    scan = scan_dataset(Table(train, val=val))
    assert {k: len(v) for k, v in scan.splits.items()} == {"train": 8, "val": 2}
    assert scan.split_source == f"val table {val}"
    assert recorded_data(scan.to_dict()).val == str(val.resolve())
    # --val through the options every verb passes (TrainConfig, the CLI's arguments)
    assert as_table(str(train), {"val_data": str(val)}).val == str(val)
    with pytest.raises(DatasetError, match="--val apply to a table"):
        as_table(tmp_path / "img", {"val_data": str(val)})


def test_iterative_stratification_keeps_label_proportions():
    rng = random.Random(7)
    rates = [0.5, 0.3, 0.2, 0.1, 0.06, 0.04, 0.02]  # common to rare labels
    samples = []
    for i in range(1000):
        labels = tuple(j for j, r in enumerate(rates) if rng.random() < r)
        samples.append(Sample(Path(f"{i}.jpg"), -1, labels))
    train, val = iterative_split(samples, 0.2, seed=0)
    assert sorted(train + val, key=lambda s: int(s.path.stem)) == samples and len(val) == 200
    total = Counter(j for s in samples for j in s.labels)
    in_val = Counter(j for s in val for j in s.labels)
    for j, n in total.items():
        assert abs(in_val[j] / n - 0.2) <= max(0.02, 1.5 / n), (j, in_val[j], n)
    # a seeded random split of the same size strays further on the rare labels
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    rand_val = Counter(j for s in shuffled[:200] for j in s.labels)
    worst = max(abs(in_val[j] / n - 0.2) for j, n in total.items())
    assert worst < max(abs(rand_val[j] / n - 0.2) for j, n in total.items())
    assert iterative_split(samples, 0.2, seed=0) == (train, val)  # the seed decides
    # a label on a single image stays in train
    one = [Sample(Path("a"), -1, (0,)), Sample(Path("b"), -1, (1,)), Sample(Path("c"), -1, (1,))]
    assert Sample(Path("a"), -1, (0,)) in iterative_split(one, 0.2, 0)[0]


def test_a_multilabel_table_split_iteratively_with_multi_hot_targets(tmp_path):
    names = [f"p{i:02d}.jpg" for i in range(40)]
    write_images(tmp_path, names)
    labels = [" ".join(l for l, k in (("fish", 2), ("shark", 3), ("ray", 5)) if i % k == 0) for i in range(40)]
    table = write_csv(tmp_path / "t.csv", ["image", "labels"], list(zip(names, labels)))
    with pytest.raises(DatasetError, match="multi-label table .*takes one label per image"):
        scan_dataset(table)
    scan = scan_dataset(table, multilabel=True)
    assert scan.multilabel and scan.classes == ["fish", "ray", "shark"]
    assert scan.split_source == "iteratively stratified 80%/20% split, seed 0"
    assert all(s.label == -1 and s.labels is not None for v in scan.splits.values() for s in v)
    first = next(s for s in scan.splits["train"] + scan.splits["val"] if s.path.name == "p00.jpg")
    assert first.labels == (0, 1, 2)  # every label; p00 is divisible by all
    targets = scan.targets("val")
    assert targets.shape == (len(scan.splits["val"]), 3) and set(targets.unique().tolist()) <= {0.0, 1.0}
    assert "images per label" in scan.summary() and "with none" in scan.summary()
    assert scan.counts("train")["fish"] + scan.counts("val")["fish"] == 20
    # an image with no label is a negative of every label in multi-label data
    none = next(s for s in scan.splits["train"] + scan.splits["val"] if s.path.name == "p01.jpg")
    assert none.labels == ()


def test_the_one_hot_form(tmp_path):
    names = [f"p{i}.png" for i in range(10)]
    write_images(tmp_path, names)
    rows = [(n, i % 2, int(i % 3 == 0), i) for i, n in enumerate(names)]
    rows[4] = ("p4.png", 2, 0, 4)  # a 0/1 column holding another value
    table = write_csv(tmp_path / "t.csv", ["image", "cat", "dog", "index"], rows)
    scan = scan_dataset(table, multilabel=True, require_val=False)
    assert scan.multilabel and scan.classes == ["cat", "dog"] and scan.table["label_col"] == ["cat", "dog"]
    assert "the 0/1 column 'cat' holds '2'" in reasons(scan) and len(scan.splits["train"]) == 9
    given = scan_dataset(Table(table, label_col="cat,dog"), multilabel=True, require_val=False)
    assert given.classes == ["cat", "dog"]


@pytest.mark.shared("aquarium")
def test_the_aquarium_tables(shared_datasets):
    root = shared_datasets / "aquarium"
    scan = scan_dataset(Table(root / "train.csv", val=root / "val.csv"), multilabel=True)
    assert scan.multilabel and len(scan.classes) == 7 and not scan.skipped
    assert {k: len(v) for k, v in scan.splits.items()} == {"train": 511, "val": 127}
    assert scan.total_counts()["fish"] == 333 and scan.total_counts()["jellyfish"] == 52
    alone = scan_dataset(root / "labels.csv", multilabel=True)
    assert alone.split_source.startswith("iteratively stratified")
    assert len(alone.splits["val"]) == pytest.approx(128, abs=3)


# --- bad tables ---------------------------------------------------------------------------------------


def _good(tmp_path, extra=()):
    rows = labelled(tmp_path) + list(extra)
    return write_csv(tmp_path / "t.csv", ["image", "label"], rows)


SKIPPED = {  # case -> (rows added to a good table, what the skipped list says)
    "missing image file": ([("img/gone.png", "cat")], "file not found (line 10)"),
    "unreadable image": ([("img/broken.png", "dog")], "unreadable image"),
    "empty label": ([("img/nolabel.png", "")], "empty label; give the image its label"),
    "path leaving the folder": ([("../outside.png", "cat")], "refused: the path leaves the table's folder"),
    "duplicated row": ([("img/cat_0.png", "dog")], "listed again (line 10; first on line 2 with other labels"),
    "empty image path": ([("", "cat")], "empty image path"),
    "a folder as image": ([("img", "cat")], "a folder, not an image file"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_bad_rows_are_listed_and_skipped(tmp_path, case):
    rows, message = SKIPPED[case]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_images(tmp_path, ["img/nolabel.png"])
    write_images(tmp_path.parent, ["outside.png"])
    table = _good(tmp_path, rows)
    before = snapshot(tmp_path)
    scan = scan_dataset(table, require_val=False)
    assert message in reasons(scan)
    assert len(scan.skipped) == 1 and len(scan.splits["train"]) == 8
    assert "skipped 1 unusable file(s)" in scan.summary()
    assert snapshot(tmp_path) == before  # nothing written into the user's data


def test_an_unknown_label_in_the_validation_table_is_skipped(tmp_path):
    train = _good(tmp_path)
    write_images(tmp_path, ["img/bird.png", "img/cat_9.png"])
    val = write_csv(tmp_path / "val.csv", ["image", "label"], [("img/bird.png", "bird"), ("img/cat_0.png", "cat"),
                                                               ("img/cat_9.png", "cat")])
    scan = scan_dataset(Table(train, val=val))
    assert [s.path.name for s in scan.splits["val"]] == ["cat_9.png"]
    assert "label 'bird' is on no training image (line 2 of" in reasons(scan)
    # the same image in train and val: the first row is kept
    assert "listed again (line 3 of" in reasons(scan)


ERRORS = {  # case -> (how to make the table, the one line the user sees)
    "no such table": (lambda d: d / "missing.csv", "table not found: .*missing.csv"),
    "unknown extension": (lambda d: _file(d / "t.xlsx", "image,label\n"), "unknown table format '.xlsx'"),
    "empty table": (lambda d: _file(d / "t.csv", "image,label\n"), "has no rows"),
    "empty file": (lambda d: _file(d / "t.jsonl", "\n"), "has no rows"),
    "missing image column": (lambda d: _file(d / "t.csv", "picture,label\na.png,cat\n"),
                             r"no image column \(its columns: picture, label\).*--image-col NAME"),
    "missing label column": (lambda d: _file(d / "t.csv", "image,comment\na.png,nice\n"),
                             r"no label column \(its columns: image, comment\).*--label-col NAME"),
    "given column absent": (lambda d: Table(_file(d / "t.csv", "image,label\na.png,cat\n"), label_col="kind"),
                            "has no column 'kind' \\(--label-col\\); its columns are image, label"),
    "unparseable CSV line": (lambda d: _file(d / "t.csv", "image,label\na.png,cat\nb.png,dog,extra\n"),
                             "line 3: 3 field.* where the header has 2"),
    "unparseable JSON line": (lambda d: _file(d / "t.jsonl", '{"image": "a.png", "label": "cat"}\n{"image": \n'),
                              "line 2: not valid JSON"),
    "JSON line not an object": (lambda d: _file(d / "t.jsonl", '["a.png", "cat"]\n'), "line 1: not a JSON object"),
    "split column with unknown values": (
        lambda d: _file(d / "t.csv", "image,label,split\nimg/cat_0.png,cat,train\nimg/dog_0.png,dog,holdout\n"),
        "line 3: the split column 'split' holds 'holdout'; use one of train, training, val"),
    "mixed delimiters": (lambda d: _file(d / "t.csv", "image,labels\nimg/cat_0.png,cat dog\nimg/dog_0.png,\"cat;dog\"\n"),
                         "line 3: the labels 'cat;dog' hold ';' but several labels are separated by ' '; "
                         "pass --label-delim ';'"),
    "not UTF-8": (lambda d: _bytes(d / "t.csv", "image,label\nkätzchen.png,cat\n".encode("latin-1")),
                  "is not UTF-8 text"),
    "two columns of one name": (lambda d: _file(d / "t.csv", "image,label,label\na.png,cat,dog\n"),
                                "two columns named 'label'"),
    "single label": (lambda d: _file(d / "t.csv", "image,label\nimg/cat_0.png,cat\nimg/cat_1.png,cat\n"),
                     "a single label \\(cat\\); a classifier needs at least two"),
    "no usable row": (lambda d: _file(d / "t.csv", "image,label\ngone.png,cat\n"),
                      "no usable training rows \\(e.g. .*gone.png: file not found"),
    "split column and --val": (lambda d: Table(_file(d / "t.csv", "image,label,split\nimg/cat_0.png,cat,train\n"),
                                               val=d / "t.csv"), "has a split column .* use one of them"),
    "table options on a folder": (lambda d: d / "img", "--image-col apply to a table"),
}


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_table_that_cannot_be_read_is_one_line_saying_what_to_fix(tmp_path, case):
    labelled(tmp_path, per_class=1)
    make, message = ERRORS[case]
    data = make(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=message) as err:
        scan_dataset(as_table(data, {"image_col": "file"} if case == "table options on a folder" else None))
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_the_cli_shows_a_bad_table_as_one_line(tmp_path, capsys):
    from transferlab.cli.main import main

    table = _file(tmp_path / "t.csv", "picture,label\na.png,cat\n")
    assert main(["advise", str(table), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("transferlab: error:") and "--image-col" in err[0]


# --- every verb ---------------------------------------------------------------------------------------


def _digit_tables(tmp_path, per_class: int = 12):
    """A small digits folder and the same files as train/val CSVs (relative paths)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(3)])
    folder = write_digit_folder(tmp_path / "digits", d.images[keep], d.target[keep])
    files = sorted(folder.rglob("*.png"))
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in files]
    return folder, rows


def test_a_folder_and_the_same_data_as_a_csv_train_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from transferlab.api import train

    folder, rows = _digit_tables(tmp_path)
    random.Random(1).shuffle(rows)
    table = write_csv(tmp_path / "digits.csv", ["image", "label"], rows)
    options = dict(strategy="feature-extract", epochs=2, image_size=32, batch_size=8, augment="none", progress=False)
    a = train(folder, out=tmp_path / "from-folder", **options)
    b = train(table, out=tmp_path / "from-table", **options)
    wa, wb = load_file(a.path / "model.safetensors"), load_file(b.path / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(__import__("torch").equal(wa[k], wb[k]) for k in wa)
    meta_a, meta_b = (json.loads((r.path / "model.json").read_text()) for r in (a, b))
    assert meta_b["dataset"]["table"]["image_col"] == "image" and meta_a["classes"] == meta_b["classes"]


def test_train_evaluate_and_predict_through_the_cli_on_tables(tmp_path, capsys):
    from transferlab.cli.main import main

    _, rows = _digit_tables(tmp_path, per_class=8)
    train_rows = [r for i, r in enumerate(rows) if i % 4]
    val_rows = [r for i, r in enumerate(rows) if not i % 4]
    train_csv = write_csv(tmp_path / "train.csv", ["file_name", "digit"], train_rows)
    val_jsonl = tmp_path / "val.jsonl"
    val_jsonl.write_text("".join(json.dumps({"file_name": p, "digit": c}) + "\n" for p, c in val_rows))
    run = tmp_path / "run"
    assert main(["train", str(train_csv), "--val", str(val_jsonl), "--label-col", "digit", "--strategy",
                 "feature-extract", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--augment", "none",
                 "--out", str(run), "--quiet"]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["dataset"]["split_source"] == f"val table {val_jsonl}"
    assert meta["config"]["label_col"] == "digit"
    assert sum(meta["dataset"]["counts"]["val"].values()) == len(val_rows)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(val_jsonl), "--label-col", "digit", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == len(val_rows) and result["split"] == f"{val_jsonl} (train)"
    # predict's inputs: the images a table lists
    assert [p.resolve() for p in find_images(val_jsonl)] == [(tmp_path / p).resolve() for p, _ in val_rows]
    assert main(["predict", str(val_jsonl), "--model", str(run), "--json", "--top", "1"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == len(val_rows) and all(r["status"] == "ok" for r in records)
    # export's calibration reads the run's own table again, with its columns and validation table
    from transferlab.api import load
    from transferlab.inference.export import run_split

    split = run_split(load(run), calibration=6)
    assert len(split.validation) == len(val_rows) and len(split.calibration) == 6
    assert split.source == f"{train_csv} (val table {val_jsonl})"


def test_audit_advise_and_sweep_take_a_table(tmp_path, capsys, monkeypatch):
    from transferlab.cli.main import main

    _, rows = _digit_tables(tmp_path, per_class=10)
    table = write_csv(tmp_path / "digits.csv", ["file", "cls"], rows)
    monkeypatch.chdir(tmp_path)
    assert main(["audit", str(table), "--label-col", "cls", "--image-size", "32", "--quiet"]) == 0
    audit = json.loads((tmp_path / "audits" / "digits" / "audit.json").read_text())
    assert audit["classes"] == ["digit_0", "digit_1", "digit_2"] and audit["splits"] == {"train": 24, "val": 6}
    capsys.readouterr()
    assert main(["advise", str(table), "--label-col", "cls", "--image-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"]
    assert main(["sweep", str(table), "--label-col", "cls", "--points", "3,5", "--epochs", "1", "--image-size", "32",
                 "--batch-size", "8", "--augment", "none", "--out", "sweep", "--quiet"]) == 0
    meta = json.loads((tmp_path / "sweep" / "model.json").read_text())
    assert meta["dataset"]["table"]["label_col"] == "cls" and meta["config"]["label_col"] == "cls"
