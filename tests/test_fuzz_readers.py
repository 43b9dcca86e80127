"""Property tests (Hypothesis) of what reads untrusted input: box ops, the letterbox and its inverse, the
face annotation readers (CSV, VOC, COCO, YOLO, WIDER), the table reader and the image reader.

Readers get generated files, some of them well formed with known contents (what comes back must be
exactly what was written, each bad annotation skipped and counted), the others mutated or random:
a reader then either reads them or stops with its one-line error (DatasetError, ImageReadError),
never another exception, never a hang. Example counts are bounded: the whole file runs in about a
minute on two cores.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.core.errors import DatasetError, ImageReadError
from transferlab.data.images import open_image, open_image_scaled, to_rgb
from transferlab.data.samples import check_image
from transferlab.data.tables import Table, scan_table
from transferlab.detect.boxes import NUM_KEYPOINTS, decode, encode, weighted_nms
from transferlab.detect.data import load_faces
from transferlab.detect.image import letterbox

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

# TRANSFERLAB_FUZZ_SCALE=20 runs twenty times the examples (a deeper search, minutes instead of one)
SCALE = max(1, int(os.environ.get("TRANSFERLAB_FUZZ_SCALE", "1")))


def bounded(n: int):
    return settings(max_examples=n * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


FAST = bounded(60)
# a reader given one small file answers in well under this, even on a busy machine: more is a hang
SECONDS_PER_CALL = 20.0

coords = st.floats(-2.0, 3.0, allow_nan=False, width=32)


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, repr(text)
    return text


def timed(fn, *args, **kw):
    t = time.monotonic()
    try:
        return fn(*args, **kw)
    finally:
        assert time.monotonic() - t < SECONDS_PER_CALL, f"{fn.__name__} took {time.monotonic() - t:.1f}s"


# --- box ops --------------------------------------------------------------------------------------
@st.composite
def boxes(draw, n=st.integers(1, 12)):
    count = draw(n)
    xy = np.asarray(draw(st.lists(st.tuples(coords, coords), min_size=count, max_size=count)), np.float32)
    wh = np.asarray(draw(st.lists(st.tuples(st.floats(0.125, 1.5, width=32), st.floats(0.125, 1.5, width=32)),
                                  min_size=count, max_size=count)), np.float32)
    return torch.from_numpy(np.concatenate([xy, xy + wh], 1))


@FAST
@given(boxes(), st.data(), st.sampled_from([128, 256]))
def test_encode_then_decode_gives_back_the_boxes_and_keypoints(b, data, size):
    n = len(b)
    centres = torch.tensor(data.draw(st.lists(st.tuples(coords, coords), min_size=n, max_size=n)), dtype=torch.float32)
    kp = torch.tensor(data.draw(st.lists(st.lists(st.tuples(coords, coords), min_size=NUM_KEYPOINTS,
                                                  max_size=NUM_KEYPOINTS), min_size=n, max_size=n)), dtype=torch.float32)
    regressors = encode(b, kp, centres, size)
    assert regressors.shape == (n, 16)
    b2, kp2 = decode(regressors, centres, size)
    assert torch.allclose(b2, b, atol=1e-4) and torch.allclose(kp2, kp, atol=1e-4)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@FAST
@given(boxes(), boxes())
def test_iou_is_torchvisions_bounded_symmetric_and_one_on_itself(a, b):
    from torchvision.ops import box_iou

    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert torch.all(iou >= 0) and torch.all(iou <= 1 + 1e-6)
    assert torch.allclose(iou, box_iou(b, a).T)
    assert torch.allclose(torch.diag(box_iou(a, a)), torch.ones(len(a)), atol=1e-5)
    expected = torch.tensor([[_iou(x.tolist(), y.tolist()) for y in b] for x in a])
    assert torch.allclose(iou, expected, atol=1e-4)


@FAST
@given(boxes(), st.data(), st.floats(0.05, 0.95))
def test_weighted_nms_keeps_one_detection_per_cluster_within_the_inputs(b, data, threshold):
    n = len(b)
    scores = torch.tensor(data.draw(st.lists(st.floats(0.125, 1.0, width=32), min_size=n, max_size=n)))
    kp = torch.zeros(n, NUM_KEYPOINTS, 2)
    out = weighted_nms(b, kp, scores, threshold)
    assert 1 <= len(out.scores) <= n
    assert out.scores[0] == scores.max()  # the best candidate always leads a cluster
    assert set(out.scores.tolist()) <= set(scores.tolist())
    lo, hi = b.min(0).values, b.max(0).values  # a blend of boxes lies within their range, edge by edge
    assert torch.all(out.boxes >= lo - 1e-4) and torch.all(out.boxes <= hi + 1e-4)


@FAST
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from([64, 128, 192]))
def test_letterbox_places_the_image_and_its_inverse_maps_it_back(h, w, size):
    image = np.full((h, w, 3), 200, np.uint8)
    out, lb = letterbox(image, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    filled = np.argwhere(out[..., 0] > 0)
    (y0, x0), (y1, x1) = filled.min(0), filled.max(0) + 1
    assert (x0, y0) == (lb.pad_x, lb.pad_y)  # the image sits at the pad, centred on a zero border
    assert abs((size - x1) - x0) <= 1 and abs((size - y1) - y0) <= 1
    assert np.all(out[y0:y1, x0:x1] == 200)  # a constant image stays constant through the resize
    # the placed region's corners map back to the image's corners (to a pixel of the resized image)
    corners = torch.tensor([[x0, y0], [x1, y1]], dtype=torch.float64) / size
    back = lb.to_image(corners, size)
    tol = 1.0 / lb.scale + 1e-6
    assert torch.allclose(back[0], torch.zeros(2, dtype=torch.float64), atol=tol)
    assert torch.allclose(back[1], torch.tensor([w, h], dtype=torch.float64), atol=tol)


# --- face annotation readers ----------------------------------------------------------------------
FAULTS = ("ok", "ok", "ok", "outside", "empty", "garbage")


@st.composite
def face_sets(draw):
    """Images (w, h) with annotations: ("ok", box) kept exactly; any other kind must be skipped."""
    images = []
    for i in range(draw(st.integers(1, 4))):
        w, h = draw(st.integers(8, 48)), draw(st.integers(8, 48))
        faces = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(FAULTS))
            x0 = draw(st.integers(0, w - 2))
            y0 = draw(st.integers(0, h - 2))
            x1 = draw(st.integers(x0 + 1, w))
            y1 = draw(st.integers(y0 + 1, h))
            if kind == "outside":
                x1 = w + draw(st.integers(3, 40))
            elif kind == "empty":
                x1 = x0
            faces.append((kind, (x0, y0, x1, y1)))
        images.append((f"img{i}.png", w, h, faces))
    return images


def _write_images(folder: Path, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, w, h, _ in images:
        Image.new("RGB", (w, h), (90, 120, 150)).save(folder / name)


def _cell(kind: str, value) -> str:
    return "n/a" if kind == "garbage" else repr(float(value))


def write_annotations(root: Path, fmt: str, images) -> Path:
    """The images and their annotations in `fmt`; returns what load_faces reads."""
    if fmt == "csv":
        _write_images(root, images)
        lines = ["image,xmin,ymin,xmax,ymax"]
        for name, _, _, faces in images:
            lines += [name] if not faces else [f"{name}," + ",".join(_cell(k, v) for v in box) for k, box in faces]
        (root / "faces.csv").write_text("\n".join(lines) + "\n")
        return root / "faces.csv"
    if fmt == "wider":
        _write_images(root / "images", images)
        lines = []
        for name, _, _, faces in images:
            lines += [name, str(len(faces))]
            lines += ["0 0 0 0 0 0 0 0 0 0"] if not faces else [
                " ".join([_cell(k, x0), _cell(k, y0), _cell(k, x1 - x0), _cell(k, y1 - y0), "0 0 0 0 0 0"])
                for k, (x0, y0, x1, y1) in faces]
        (root / "wider_face_train_bbx_gt.txt").write_text("\n".join(lines) + "\n")
        return root
    if fmt == "voc":
        _write_images(root / "JPEGImages", images)
        (root / "Annotations").mkdir()
        for name, w, h, faces in images:
            objects = "".join(
                "<object><name>face</name><bndbox>" + "".join(
                    f"<{t}>{_cell(k, v)}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
                + "</bndbox></object>" for k, box in faces)
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>"
                f"{objects}</annotation>")
        return root
    if fmt == "coco":
        _write_images(root / "images", images)
        doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "face"}]}
        for i, (name, w, h, faces) in enumerate(images):
            doc["images"].append({"id": i, "file_name": name, "width": w, "height": h})
            for k, (x0, y0, x1, y1) in faces:
                bbox = ["n/a"] * 4 if k == "garbage" else [x0, y0, x1 - x0, y1 - y0]
                doc["annotations"].append({"image_id": i, "category_id": 1, "bbox": bbox})
        (root / "faces.json").write_text(json.dumps(doc))
        return root / "faces.json"
    assert fmt == "yolo"
    _write_images(root / "images", images)
    (root / "labels").mkdir()
    for name, w, h, faces in images:
        rows = []
        for k, (x0, y0, x1, y1) in faces:
            values = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
            rows.append("0 " + " ".join("n/a" if k == "garbage" else repr(v) for v in values))
        (root / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    return root


READER_FORMATS = ("csv", "wider", "voc", "coco", "yolo")


@bounded(40)
@given(st.sampled_from(READER_FORMATS), face_sets())
def test_each_reader_gives_back_every_good_box_and_skips_every_bad_one(fmt, images):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_annotations(Path(tmp), fmt, images)
        try:
            ds = timed(load_faces, path, fmt)
        except DatasetError as e:  # only when no image is usable: not the case here (every image exists)
            raise AssertionError(f"{fmt}: {e}") from None
        got = {s.image.name: s.boxes for s in ds.samples}
        assert set(got) == {name for name, *_ in images}, (fmt, got.keys())
        for name, _, _, faces in images:
            want = np.asarray([box for k, box in faces if k == "ok"], np.float32).reshape(-1, 4)
            assert got[name].shape == want.shape, (fmt, name, got[name], faces)
            assert np.allclose(got[name], want, atol=1e-3), (fmt, name, got[name], want)
        assert len(ds.skipped) == sum(k != "ok" for *_, faces in images for k, _ in faces), (fmt, ds.skipped)
        for s in ds.skipped:
            assert s.reason and "\n" not in s.reason


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, cut, insert in edits:
        if not out:
            out += insert
            continue
        i = pos % len(out)
        out[i:i + cut] = insert
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 8),
                           st.one_of(st.binary(max_size=6), st.sampled_from(
                               [b"\x00", b"\xff\xfe", b"-1", b"1e309", b"nan", b"\n", b",", b'"', b"<", b"}", b"[",
                                b"99999999999", b"../../", b"\xc3\x28"]))), min_size=1, max_size=6)


def _one_annotation_file(root: Path, fmt: str) -> Path:
    return {"csv": root / "faces.csv", "wider": root / "wider_face_train_bbx_gt.txt", "coco": root / "faces.json",
            "voc": next((root / "Annotations").glob("*.xml"), root), "yolo": next((root / "labels").glob("*.txt"), root)}[fmt]


@bounded(150)
@given(st.sampled_from(READER_FORMATS), face_sets(), edits)
def test_a_mutated_annotation_file_is_read_or_refused_in_one_line(fmt, images, changes):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_annotations(Path(tmp), fmt, images)
        target = _one_annotation_file(Path(tmp), fmt)
        assume(target.is_file())
        target.write_bytes(_mutate(target.read_bytes(), changes))
        try:
            ds = timed(load_faces, path, fmt)
        except DatasetError as e:
            one_line(e)
            return
        for s in ds.samples:
            assert s.boxes.dtype == np.float32 and s.boxes.shape[1:] == (4,)
            assert np.all(np.isfinite(s.boxes)) and np.all(s.boxes[:, 2:] > s.boxes[:, :2])
            assert s.keypoints.shape == (len(s.boxes), NUM_KEYPOINTS, 2)
        assert all(r.reason and "\n" not in r.reason for r in ds.skipped)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def coco_documents(draw):
    """COCO-shaped JSON where any part may be of the wrong type."""
    def maybe(value):
        return draw(st.one_of(st.just(value), json_values)) if draw(st.booleans()) else value

    images = maybe([maybe({"id": maybe(i), "file_name": maybe(f"img{i}.png")}) for i in range(draw(st.integers(0, 3)))])
    annotations = maybe([maybe({"image_id": maybe(0), "category_id": maybe(1), "bbox": maybe([1, 1, 4, 4]),
                                "keypoints": maybe([1.0, 2.0, 2] * NUM_KEYPOINTS)})
                         for _ in range(draw(st.integers(0, 3)))])
    return maybe({"images": images, "annotations": annotations, "categories": maybe([maybe({"id": 1, "name": "face"})])})


@bounded(200)
@given(coco_documents())
def test_a_coco_file_with_wrong_types_is_read_or_refused_in_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_images(root / "images", [("img0.png", 16, 16, [])])
        (root / "faces.json").write_text(json.dumps(doc))
        try:
            timed(load_faces, root / "faces.json", "coco")
        except DatasetError as e:
            one_line(e)


# --- the table reader -----------------------------------------------------------------------------
LABELS = ("cat", "dog", "bird")


@st.composite
def label_tables(draw):
    """(rows of (image name, labels, split)): each image once, each label on two training images."""
    n = draw(st.integers(4, 10))
    rows = [(f"im{i}.png", LABELS[i % 2], "train" if i < 4 else draw(st.sampled_from(["train", "val"])))
            for i in range(n)]
    return draw(st.permutations(rows))


def _table_text(rows, fmt: str, header=("image", "label", "split")) -> str:
    if fmt == "jsonl":
        return "\n".join(json.dumps(dict(zip(header, r))) for r in rows) + "\n"
    sep = "\t" if fmt == "tsv" else ","
    return "\n".join([sep.join(header)] + [sep.join(r) for r in rows]) + "\n"


@bounded(50)
@given(label_tables(), st.sampled_from(["csv", "tsv", "jsonl"]))
def test_a_generated_table_reads_back_exactly(rows, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, *_ in rows:
            Image.new("RGB", (8, 8)).save(root / name)
        path = root / f"t.{fmt}"
        path.write_text(_table_text(rows, fmt))
        scan = timed(scan_table, path, require_val=False)
        assert scan.classes == ["cat", "dog"] and not scan.skipped
        got = {(s.path.name, scan.classes[s.label], split) for split, samples in scan.splits.items() for s in samples}
        assert got == set(rows)


@bounded(150)
@given(label_tables(), st.sampled_from(["csv", "tsv", "jsonl"]), edits)
def test_a_mutated_table_is_read_or_refused_in_one_line(rows, fmt, changes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, *_ in rows:
            Image.new("RGB", (8, 8)).save(root / name)
        path = root / f"t.{fmt}"
        path.write_bytes(_mutate(_table_text(rows, fmt).encode(), changes))
        try:
            scan = timed(scan_table, Table(path), require_val=False)
        except DatasetError as e:
            one_line(e)
            return
        assert all(reason and "\n" not in reason for _, reason in scan.skipped)


# --- the image reader -----------------------------------------------------------------------------
def _encoded(fmt: str, w: int = 24, h: int = 16) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(w * 1000 + h)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SMALL = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")}


def _read(data: bytes, tmp: Path, name: str = "x.img"):
    """open_image on the bytes as a file: an image, or ImageReadError with one line."""
    path = tmp / name
    path.write_bytes(data)
    try:
        img = timed(open_image, path, min_size=8)
    except ImageReadError as e:
        return one_line(e)
    assert img.mode == "RGB" and img.size[0] > 0 and img.size[1] > 0
    reason = check_image(path)  # the dataset scan's cheaper check agrees or is stricter, in one line
    assert reason is None or "\n" not in reason
    return img


@bounded(100)
@given(st.binary(max_size=2048))
def test_random_bytes_are_an_image_or_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        _read(data, Path(tmp))


@bounded(120)
@given(st.sampled_from(sorted(SMALL)), st.data())
def test_truncated_and_corrupted_images_are_an_image_or_one_line(fmt, data):
    good = SMALL[fmt]
    cut = data.draw(st.integers(0, len(good)))
    damaged = _mutate(good[:cut], data.draw(edits)) if data.draw(st.booleans()) else good[:cut]
    with tempfile.TemporaryDirectory() as tmp:
        _read(damaged, Path(tmp))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def forged_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with a few bytes of pixel data (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        _png_chunk(b"IEND", b"")


def forged_jpeg(w: int, h: int) -> bytes:
    """A real small JPEG with its frame header (SOF0) rewritten to claim w x h pixels."""
    data = bytearray(SMALL["JPEG"])
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def forged_gif(w: int, h: int) -> bytes:
    data = bytearray(SMALL["GIF"])
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def forged_bmp(w: int, h: int) -> bytes:
    data = bytearray(SMALL["BMP"])
    data[18:26] = struct.pack("<ii", w, h)
    return bytes(data)


FORGERS = {"PNG": forged_png, "JPEG": forged_jpeg, "GIF": forged_gif, "BMP": forged_bmp}


@bounded(60)
@given(st.sampled_from(sorted(FORGERS)), st.integers(1, 65535), st.integers(1, 65535))
def test_forged_dimensions_are_refused_fast_in_one_line(fmt, w, h):
    """A header that claims up to 65535 x 65535 pixels: refused (too large, or truncated data) in one
    line and fast, or, when the claim is small, read; never a traceback, a hang or gigabytes allocated."""
    with tempfile.TemporaryDirectory() as tmp:
        got = _read(FORGERS[fmt](w, h), Path(tmp))
    if w * h > 2 * Image.MAX_IMAGE_PIXELS:
        assert isinstance(got, str) and "too large" in got, (fmt, w, h, got)


@pytest.mark.parametrize("fmt", sorted(FORGERS))
def test_a_decompression_bomb_header_is_refused_by_the_reader_and_the_server_check(fmt, tmp_path):
    from transferlab.serve.models import UploadError, sniff_and_open

    bomb = FORGERS[fmt](60000, 60000)
    assert "too large" in _read(bomb, tmp_path)
    with pytest.raises(UploadError) as e:
        sniff_and_open(bomb, 40_000_000)
    assert e.value.status == 413 and "\n" not in e.value.message
    assert open_image_scaled(io.BytesIO(SMALL[fmt]))[0].size == (24, 16)


MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")


@bounded(80)
@given(st.sampled_from(MODES), st.integers(1, 20), st.integers(1, 20), st.binary(min_size=16, max_size=16))
def test_to_rgb_takes_every_mode(mode, w, h, seed):
    rng = np.random.default_rng(list(seed))
    img = Image.new(mode, (w, h))
    raw = rng.integers(0, 256, len(img.tobytes()), dtype=np.uint8).tobytes()
    if mode == "F":  # any float32 bit pattern: NaN, inf, subnormals
        raw = rng.integers(0, 256, w * h * 4, dtype=np.uint8).tobytes()
    img.frombytes(raw)
    with np.errstate(invalid="ignore", over="ignore"):
        out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (w, h)
