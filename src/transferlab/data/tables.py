"""Datasets as tables: a CSV/TSV file, a JSON-lines file or a pandas DataFrame listing image paths and
their labels, read into the same DatasetScan as a class-per-folder dataset (data/folders.py), so every
verb that takes a folder takes a table.

Columns are found by their common names or given (Table.image_col, label_col):
  image    the image's path, relative to the table's folder (a DataFrame's: Table.root, else the
           working folder) or absolute; a relative path that leaves that folder is refused
  labels   one label per cell; several separated by `label_delim` (default a space; "none": one label
           per cell) or a JSON list; or one 0/1 column per label (one-hot, "wide")
  split    optional: train, val (valid, validation) or test per row; or fastai's is_valid flag
A table is multi-label when a row carries several labels, or in the one-hot form. Without a split
column the validation rows come from `Table.val` (another table), else from the seeded split:
stratified per class, or iteratively stratified (data.samples.iterative_split) for multi-label data.

Bad rows are listed in DatasetScan.skipped with the line they are on (missing or unreadable image,
empty or unknown label, a path leaving the folder, a repeated image, a 0/1 column holding another
value); a table that cannot be read as a whole (no such file, an unknown format, a broken line, a
missing column, no rows, a split value or label separator it cannot read) is one DatasetError saying
what to fix. Nothing is ever written.

Pandas is not needed to read files; a DataFrame is read through its own to_dict.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DatasetError
from .samples import (SPLIT_NAMES, DatasetScan, Sample, check_image, iterative_split, read_exclude,
                      stratified_split)

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
IMAGE_COLUMNS = ("image", "images", "image_path", "filepath", "file_path", "filename", "file_name", "file",
                 "path", "img")
LABEL_COLUMNS = ("labels", "label", "tags", "tag", "class", "classes", "category", "categories", "target")
SPLIT_COLUMNS = ("split", "subset", "partition")
VALID_FLAG_COLUMNS = ("is_valid", "is_val")  # fastai's valid_col: true for a validation row
# columns never taken for one-hot labels when none is named: an exported index, an id
_NOT_LABELS = ("", "index", "id", "unnamed")
_SEPARATORS = ",;|\t"
_FLAGS = {"image_col": "--image-col", "label_col": "--label-col", "label_delim": "--label-delim", "val": "--val"}


@dataclass(eq=False)
class Table:
    """A table of images and labels, and how to read it.

    source: a .csv/.tsv/.jsonl/.ndjson file or a pandas DataFrame. image_col, label_col: column names
    (default: found by common names); label_col may name several 0/1 columns, comma-separated.
    label_delim: what separates several labels in one cell ("none" or "": one label per cell).
    val: a table of validation images (the main table is then all training, unless it has a split
    column). root: where a DataFrame's relative paths start (default: the working folder)."""

    source: object
    image_col: str | None = None
    label_col: str | None = None
    label_delim: str | None = " "
    val: object = None
    root: str | os.PathLike | None = None

    def __str__(self) -> str:
        return _describe(self.source)


def _is_frame(data) -> bool:
    return hasattr(data, "columns") and hasattr(data, "to_dict") and not isinstance(data, (str, os.PathLike))


def _describe(source) -> str:
    return "the DataFrame" if _is_frame(source) else str(source)


def is_table(data) -> bool:
    """True for a Table, a DataFrame, or a path that is a file (or names a table format) rather than a
    folder."""
    if isinstance(data, Table) or _is_frame(data):
        return True
    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data)
    return path.suffix.lower() in TABLE_FORMATS and not path.is_dir() or path.is_file()


def as_table(data, options=None):
    """`data` as scan_dataset reads it: a Table carrying the table options of `options` (an object or a
    dict with image_col, label_col, label_delim, val_data: TrainConfig, the CLI's parsed arguments) when
    data is a table; a folder unchanged (refused with table options, which only a table has)."""
    get = options.get if isinstance(options, dict) else (lambda k: getattr(options, k, None))
    given = {k: get(k) for k in ("image_col", "label_col", "label_delim")}
    given["val"] = get("val_data")
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(data, Table):
        return Table(**{**data.__dict__, **given}) if given else data
    if is_table(data):
        return Table(data, **given)
    if given:
        flags = ", ".join(_FLAGS[k] for k in given)
        raise DatasetError(f"{flags} apply to a table of images and labels (CSV, TSV, JSON lines); {data} is a "
                           "folder, whose validation images go in its val/ sub-folder")
    return data


def dataset_name(data) -> str:
    """A short name for the data, for default run and audit folders: the folder's name, or the table's
    (its folder's when the file has a generic name such as train.csv)."""
    if isinstance(data, Table):
        data = data.source
    if _is_frame(data):
        return "dataframe"
    path = Path(data).resolve()
    if is_table(path):
        generic = {"train", "training", "data", "dataset", "labels", "metadata", "annotations", "index", "manifest"}
        return path.parent.name if path.stem.lower() in generic else path.stem
    return path.name


# --- reading rows -------------------------------------------------------------------------------------


@dataclass
class _Rows:
    name: str  # the file, or "the DataFrame", for messages
    base: Path  # where relative image paths start
    fmt: str
    columns: list[str]
    rows: list[tuple[str, dict]]  # (where: "line 4" or "row 3", {column: value})


def _read(source, root=None) -> _Rows:
    if _is_frame(source):
        columns = [str(c) for c in source.columns]
        records = source.to_dict("records")
        rows = [(f"row {idx}", {str(k): v for k, v in rec.items()}) for idx, rec in zip(source.index, records)]
        out = _Rows("the DataFrame", Path(root) if root else Path.cwd(), "dataframe", columns, rows)
    else:
        path = Path(source)
        fmt = TABLE_FORMATS.get(path.suffix.lower())
        if not path.exists():
            raise DatasetError(f"table not found: {path}; give a CSV, TSV or JSON-lines file of image paths and "
                               "labels, or a folder with one sub-folder of images per class")
        if fmt is None:
            raise DatasetError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; give a .csv, .tsv, "
                               ".jsonl or .ndjson file, or a folder with one sub-folder of images per class")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
        except OSError as e:
            raise DatasetError(f"cannot read the table {path}: {e.strerror or e}") from None
        columns, rows = _read_jsonl(path, text) if fmt == "jsonl" else _read_csv(path, text, fmt)
        out = _Rows(str(path), path.parent, fmt, columns, rows)
    if not out.rows:
        raise DatasetError(f"{out.name} has no rows; list one image per row under a header such as image,label")
    return out


def _read_csv(path: Path, text: str, fmt: str) -> tuple[list[str], list]:
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    if fmt == "tsv":
        delimiter = "\t"
    else:  # the separator the header uses most (column names seldom hold one)
        counts = {d: header_line.count(d) for d in ",;\t|"}
        delimiter = max(counts, key=counts.get) if max(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, rows = None, []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                twice = sorted({c for c in header if header.count(c) > 1})
                if twice:
                    raise DatasetError(f"{path} has two columns named {twice[0]!r}; rename one")
                continue
            if len(row) != len(header):
                raise DatasetError(
                    f"{path} line {reader.line_num}: {len(row)} field(s) where the header has {len(header)} "
                    f"(separated by {delimiter!r}); quote a value that holds {delimiter!r}, and use one separator "
                    "throughout")
            rows.append((f"line {reader.line_num}", dict(zip(header, row))))
    except csv.Error as e:
        raise DatasetError(f"{path} line {reader.line_num}: cannot be read as CSV ({e})") from None
    return header or [], rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list]:
    columns: dict[str, None] = {}
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = e
        if not isinstance(record, dict):
            why = f"not valid JSON ({record.msg})" if isinstance(record, Exception) else "not a JSON object"
            raise DatasetError(f"{path} line {n}: {why}; write one object per line, e.g. "
                               '{"image": "cats/1.jpg", "label": "cat"}')
        columns.update(dict.fromkeys(str(k) for k in record))
        rows.append((f"line {n}", {str(k): v for k, v in record.items()}))
    return list(columns), rows


def _text(value) -> str:
    """A cell as text: "" for missing (None, NaN), integral floats without ".0"."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _binary(value) -> int | None:
    """0 or 1 from a one-hot cell (0, 1, 0.0, 1.0, true, false), else None."""
    text = _text(value).lower()
    return {"0": 0, "1": 1, "false": 0, "true": 1}.get(text)


# --- columns ------------------------------------------------------------------------------------------


@dataclass
class _Columns:
    image: str
    label: str | None  # one column of labels, or
    onehot: list[str] | None  # one 0/1 column per label
    split: str | None
    flag: bool  # split is a true/false "is_valid" column


def _given(rows: _Rows, name: str, flag: str) -> str:
    if name in rows.columns:
        return name
    lower = {c.lower(): c for c in rows.columns}
    if name.lower() in lower:
        return lower[name.lower()]
    raise DatasetError(f"{rows.name} has no column {name!r} ({flag}); its columns are {', '.join(rows.columns)}")


def _common(rows: _Rows, names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in rows.columns}
    return next((lower[n] for n in names if n in lower), None)


def _columns(rows: _Rows, table: Table, labels: bool = True) -> _Columns:
    found = ", ".join(rows.columns) or "none"
    image = _given(rows, table.image_col, "--image-col") if table.image_col else _common(rows, IMAGE_COLUMNS)
    if image is None:
        raise DatasetError(f"{rows.name} has no image column (its columns: {found}); name it image, file, path or "
                           "filename, or pass --image-col NAME")
    split = _common(rows, SPLIT_COLUMNS)
    flag = split is None and _common(rows, VALID_FLAG_COLUMNS) is not None
    split = split or _common(rows, VALID_FLAG_COLUMNS)
    if not labels:
        return _Columns(image, None, None, split, flag)
    label, onehot = None, None
    if table.label_col:
        if table.label_col in rows.columns or "," not in table.label_col:
            label = _given(rows, table.label_col, "--label-col")
        else:
            onehot = [_given(rows, c.strip(), "--label-col") for c in table.label_col.split(",") if c.strip()]
    else:
        label = _common(rows, LABEL_COLUMNS)
    if label is None and onehot is None:
        onehot = [c for c in rows.columns if c not in (image, split) and _looks_onehot(rows, c)]
    if not label and not onehot:
        raise DatasetError(f"{rows.name} has no label column (its columns: {found}); name it label or labels (several "
                           "labels separated by a space), give one 0/1 column per label, or pass --label-col NAME")
    return _Columns(image, label, onehot, split, flag)


def _looks_onehot(rows: _Rows, column: str) -> bool:
    """Most of the column's cells are 0 or 1 (the others are then reported row by row)."""
    if column.strip().lower().split(":")[0] in _NOT_LABELS:
        return False
    cells = [row[column] for _, row in rows.rows if _text(row.get(column)) != ""]
    return bool(cells) and sum(_binary(v) is not None for v in cells) * 2 > len(cells)


# --- rows to samples ----------------------------------------------------------------------------------


@dataclass
class _Record:
    where: str
    split: str
    path: Path
    labels: tuple[str, ...]


def _split_of(rows: _Rows, cols: _Columns, where: str, row: dict) -> str:
    value = _text(row.get(cols.split)).lower()
    if cols.flag:
        flag = _binary(value)
        if flag is None:
            raise DatasetError(f"{rows.name} {where}: column {cols.split!r} holds {value!r}; it marks validation "
                               "rows with true or 1 and training rows with false or 0")
        return "val" if flag else "train"
    for split, names in SPLIT_NAMES.items():
        if value in names:
            return split
    accepted = ", ".join(n for names in SPLIT_NAMES.values() for n in names)
    raise DatasetError(f"{rows.name} {where}: the split column {cols.split!r} holds {value!r}; use one of {accepted}")


def _labels(rows: _Rows, cols: _Columns, where: str, row: dict, delim: str) -> tuple[str, ...] | str:
    """The row's labels (none for an empty cell), or the reason they cannot be read."""
    if cols.onehot:
        out = []
        for c in cols.onehot:
            bit = _binary(row.get(c))
            if bit is None:
                held = _text(row.get(c))
                return (f"the 0/1 column {c!r} holds {held!r}" if held else f"the 0/1 column {c!r} is empty") + \
                    "; a one-hot label column holds 0 or 1"
            if bit:
                out.append(c)
        return tuple(out)
    cell = row.get(cols.label)
    if isinstance(cell, (list, tuple)):  # a JSON list, or a DataFrame cell holding a list
        tokens = [_text(v) for v in cell]
    else:
        text = _text(cell)
        tokens = text.split(delim) if delim else [text]
        for sep in _SEPARATORS:
            if delim and sep != delim and any(sep in t for t in tokens):
                raise DatasetError(
                    f"{rows.name} {where}: the labels {text!r} hold {sep!r} but several labels are separated by "
                    f"{delim!r}; pass --label-delim {sep!r}, or use one separator throughout")
    return tuple(dict.fromkeys(t.strip() for t in tokens if t.strip()))  # () when empty: see scan_table


def _image_path(rows: _Rows, cell) -> Path | str:
    """The image's path, or the reason it is refused."""
    text = _text(cell)
    if not text:
        return "empty image path"
    path = Path(text)
    if path.is_absolute():
        return path
    inside = os.path.normpath(text)
    if inside == ".." or inside.startswith(".." + os.sep):
        return f"refused: the path leaves the table's folder {rows.base}; give it relative to that folder, or absolute"
    return rows.base / inside


def _records(rows: _Rows, cols: _Columns, delim: str, val_table: bool, seen: dict,
             skipped: list) -> list[_Record]:
    out = []
    for where, row in rows.rows:
        if val_table:
            where = f"{where} of {rows.name}"
        split = "val" if val_table else (_split_of(rows, cols, where, row) if cols.split else "train")
        path = _image_path(rows, row.get(cols.image))
        if isinstance(path, str):
            skipped.append((f"{rows.name} {where}: {_text(row.get(cols.image))!r}", path))
            continue
        labels = _labels(rows, cols, where, row, delim)
        if isinstance(labels, str):
            skipped.append((str(path), f"{labels} ({where})"))
            continue
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            first = seen[key]
            other = "" if first.labels == labels else f" with other labels ({', '.join(first.labels) or 'none'} there)"
            skipped.append((str(path), f"listed again ({where}; first on {first.where}{other}); the first row is kept"))
            continue
        seen[key] = record = _Record(where, split, path, labels)
        out.append(record)
    return out


def _usable(record: _Record, skipped: list) -> bool:
    if not record.path.exists():
        reason = "file not found"
    elif record.path.is_dir():
        reason = "a folder, not an image file"
    else:
        reason = check_image(record.path)
    if reason:
        skipped.append((str(record.path), f"{reason} ({record.where})"))
    return reason is None


def scan_table(data, val_split: float = 0.2, seed: int = 0, require_val: bool = True, exclude=None,
               multilabel: bool = False) -> DatasetScan:
    """Read a table (a Table, a DataFrame or a table file) into a DatasetScan; see the module's notes.
    multilabel: the caller handles several labels per image; otherwise a multi-label table is refused."""
    table = data if isinstance(data, Table) else Table(data)
    delim = table.label_delim
    delim = "\t" if delim == "\\t" else ("" if delim is None or str(delim).lower() == "none" else delim)
    main = _read(table.source, table.root)
    cols = _columns(main, table)
    skipped: list[tuple[str, str]] = []
    seen: dict[str, _Record] = {}  # image -> its first row
    records = _records(main, cols, delim, False, seen, skipped)
    val_cols = None
    if table.val is not None:
        if cols.split:
            raise DatasetError(f"{main.name} has a split column ({cols.split!r}) and a validation table was given "
                               "(--val); use one of them")
        val_rows = _read(table.val, table.root)
        val_cols = _columns(val_rows, Table(None, table.image_col, table.label_col))
        records += _records(val_rows, val_cols, delim, True, seen, skipped)
    records = [r for r in records if _usable(r, skipped)]
    excluded = read_exclude(exclude, main.base) if exclude else None
    if excluded:
        records = [r for r in records if str(r.path.resolve()) not in excluded]
    train_labels = sorted({label for r in records if r.split == "train" for label in r.labels})
    onehot = bool(cols.onehot or val_cols and val_cols.onehot)
    if not any(r.split == "train" for r in records):
        example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DatasetError(f"{main.name} has no usable training rows{example}")
    if len(train_labels) < 2:
        raise DatasetError(f"{main.name}: the training rows carry a single label ({', '.join(train_labels) or 'none'});"
                           " a classifier needs at least two")
    known = set(train_labels)
    kept = []
    for r in records:
        unknown = [label for label in r.labels if label not in known]
        if unknown:
            skipped.append((str(r.path), f"label {unknown[0]!r} is on no training image ({r.where}); the row is left "
                                         "out"))
        else:
            kept.append(r)
    index = {label: i for i, label in enumerate(train_labels)}
    several = next((r for r in kept if len(r.labels) > 1), None)
    is_multilabel = onehot or several is not None
    if is_multilabel and not multilabel:
        raise DatasetError(_refusal(main.name, onehot, several, delim))
    if not is_multilabel:  # an image with no label is a negative of every label in multi-label data only
        skipped.extend((str(r.path), f"empty label; give the image its label, or remove the row ({r.where})")
                       for r in kept if not r.labels)
        kept = [r for r in kept if r.labels]
    splits: dict[str, list[Sample]] = {"train": []}
    for r in kept:
        ids = tuple(sorted(index[label] for label in r.labels))
        sample = Sample(r.path, -1, ids) if is_multilabel else Sample(r.path, ids[0])
        splits.setdefault(r.split, []).append(sample)
    # the folder scan's order (class by class, files sorted), so a table of a folder's files trains alike
    order = (lambda s: s.path) if is_multilabel else (lambda s: (s.label, s.path))
    splits = {k: sorted(splits[k], key=order) for k in ("train", "val", "test") if k in splits}
    if table.val is not None:
        source = f"val table {_describe(table.val)}"
    elif cols.split and splits.get("val"):
        source = f"split column {cols.split!r}"
    elif require_val:
        splitter = iterative_split if is_multilabel else stratified_split
        splits["train"], splits["val"] = splitter(splits["train"], val_split, seed)
        kind = "iteratively stratified" if is_multilabel else "random"
        source = f"{kind} {1 - val_split:.0%}/{val_split:.0%} split, seed {seed}"
        if cols.split:
            source += f" (the split column {cols.split!r} has no val rows)"
    else:
        source = f"split column {cols.split!r}" if cols.split else "the table"
    if require_val and not splits.get("val"):
        raise DatasetError(f"no validation rows in {main.name}; add a split column, give a validation table (--val), "
                           "or use --val-split > 0")
    describe = {"format": main.fmt, "image_col": cols.image, "label_col": cols.onehot or cols.label,
                "label_delim": delim, "split_col": cols.split,
                "val": None if table.val is None else _describe(table.val if _is_frame(table.val)
                                                                else Path(table.val).resolve())}
    scan = DatasetScan(Path(main.name) if main.fmt != "dataframe" else main.base, train_labels, splits, skipped,
                       source, multilabel=is_multilabel, table=describe)
    if excluded:
        scan.excluded = len(excluded)
    return scan


def _refusal(name: str, onehot: bool, several, delim: str) -> str:
    if onehot:
        return f"{name} is a multi-label table (one 0/1 column per label); this command takes one label per image"
    hint = ""
    if delim:
        hint = (f"; if each cell holds one label, one with {delim!r} in its name, pass --label-delim none")
    return (f"{name} is a multi-label table ({several.where}: {', '.join(several.labels)}); this command takes one "
            f"label per image{hint}")


def table_images(source, image_col: str | None = None) -> list[Path]:
    """The images a table lists, in its order (for predict's inputs): relative paths from the table's
    folder, absolute ones as they are; a relative path leaving the folder is refused."""
    rows = _read(source)
    cols = _columns(rows, Table(None, image_col), labels=False)
    out = []
    for where, row in rows.rows:
        path = _image_path(rows, row.get(cols.image))
        if isinstance(path, str):
            raise DatasetError(f"{rows.name} {where}: {path}")
        out.append(path)
    return out


def recorded_data(dataset: dict):
    """The data a run was trained on, from model.json's "dataset", ready for scan_dataset: the folder,
    or the table with the columns, label separator and validation table it was read with."""
    root, table = dataset.get("root"), dataset.get("table")
    if not table:
        return root
    if table.get("format") == "dataframe":
        raise DatasetError("the run was trained from a DataFrame, which a run does not keep; give --data with a "
                           "table or folder of the same classes")
    label = table.get("label_col")
    return Table(root, table.get("image_col"), ",".join(label) if isinstance(label, list) else label,
                 table.get("label_delim"), table.get("val"))
