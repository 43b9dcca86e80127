"""Face annotations from WIDER FACE, Pascal VOC, COCO, YOLO and CSV, validated into one form.

Every format is read into `Sample`s (boxes xyxy in image pixels, keypoints NaN where unlabelled).
Annotations that cannot be trusted are skipped and reported in `FaceDataset.skipped`, never guessed.
Keypoints, where a format carries them (COCO, YOLO-pose), are six points in MediaPipe order: right eye,
left eye, nose, mouth, right ear tragion, left ear tragion.
"""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import DatasetError
from ..core.options import ANNOTATION_FORMATS
from .boxes import NUM_KEYPOINTS
from ..data.images import walk_images

# annotation tools often round a box edge one pixel past the border; more than this is a real error
_EDGE_TOLERANCE_PX = 1.0


@dataclass
class Sample:
    image: Path
    boxes: np.ndarray       # (N, 4) float32 xmin, ymin, xmax, ymax in pixels
    keypoints: np.ndarray   # (N, 6, 2) float32 pixels, NaN where not labelled


@dataclass(frozen=True)
class Skipped:
    where: str    # file[:line] or image the problem was found in
    reason: str


@dataclass
class FaceDataset:
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    format: str = ""

    @property
    def num_faces(self) -> int:
        """Faces over all images."""
        return sum(len(s.boxes) for s in self.samples)

    def summary(self) -> str:
        """One line: images, faces, format, skipped annotations."""
        return (f"{len(self.samples)} images, {self.num_faces} faces ({self.format}); "
                f"{len(self.skipped)} annotations skipped")


@dataclass
class _Face:
    box: tuple[float, float, float, float]          # xyxy pixels, unvalidated
    keypoints: np.ndarray | None                     # (6, 2) or None
    where: str


_Raw = dict[Path, list[_Face]]  # image path -> faces, insertion-ordered


def _nan_keypoints(n: int) -> np.ndarray:
    return np.full((n, NUM_KEYPOINTS, 2), np.nan, np.float32)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError):
        return None


def _validate(raw: _Raw, skipped: list[Skipped]) -> list[Sample]:
    samples = []
    for path, faces in raw.items():
        size = _image_size(path) if path.is_file() else None
        if size is None:
            reason = "image file missing" if not path.is_file() else "image cannot be decoded"
            skipped.append(Skipped(str(path), f"{reason} ({len(faces)} faces dropped)"))
            continue
        w, h = size
        boxes, kps = [], []
        for f in faces:
            x0, y0, x1, y1 = f.box
            if not (x1 > x0 and y1 > y0):
                skipped.append(Skipped(f.where, f"zero or negative area box {f.box}"))
                continue
            t = _EDGE_TOLERANCE_PX
            if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
                skipped.append(Skipped(f.where, f"box {tuple(round(v, 1) for v in f.box)} outside image {w}x{h}"))
                continue
            boxes.append([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)])
            kps.append(f.keypoints if f.keypoints is not None else _nan_keypoints(1)[0])
        samples.append(Sample(path, np.asarray(boxes, np.float32).reshape(-1, 4),
                              np.asarray(kps, np.float32).reshape(-1, NUM_KEYPOINTS, 2)))
    return samples


def _floats(parts: list[str]) -> list[float]:
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"non-numeric value in {parts}") from None


def _wider_image_root(txt: Path) -> Path:
    """images/ beside the file, or the official layout: wider_face_split/x_train_bbx_gt.txt with
    WIDER_train/images/ one level up."""
    split = next((k for k in ("train", "val", "test") if k in txt.name), None)
    candidates = [txt.parent / "images"]
    if split:
        candidates += [txt.parent.parent / f"WIDER_{split}" / "images", txt.parent / f"WIDER_{split}" / "images"]
    return next((c for c in candidates if c.is_dir()), txt.parent)


def read_wider(txt: Path, image_root: Path | None = None) -> FaceDataset:
    """WIDER FACE `wider_face_*_bbx_gt.txt`: image line, face count, then `x y w h blur expression
    illumination invalid occlusion pose` per face (one all-zero line when the count is 0)."""
    image_root = image_root or _wider_image_root(txt)
    lines = [ln.strip() for ln in txt.read_text().splitlines()]
    raw: _Raw = {}
    skipped: list[Skipped] = []
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        name = lines[i]
        try:
            count = int(lines[i + 1])
        except (IndexError, ValueError):
            raise DatasetError(f"{txt}:{i + 2}: expected the face count for {name}; is this a WIDER FACE bbx_gt file?") from None
        faces = raw.setdefault(image_root / name, [])
        for j in range(i + 2, i + 2 + max(count, 1)):
            where = f"{txt}:{j + 1}"
            if j >= len(lines):
                skipped.append(Skipped(where, "file ends before all faces of the image were listed"))
                break
            if count == 0:
                continue
            try:
                x, y, w, h, *attrs = _floats(lines[j].split())
            except ValueError as e:
                skipped.append(Skipped(where, str(e)))
                continue
            if len(attrs) >= 4 and attrs[3] == 1:
                skipped.append(Skipped(where, "face marked invalid in WIDER FACE"))
                continue
            faces.append(_Face((x, y, x + w, y + h), None, where))
        i += 2 + max(count, 1)
    return FaceDataset(_validate(raw, skipped), skipped, "wider")


def read_voc(xml_files: list[Path], image_dir: Path | None = None) -> FaceDataset:
    """Pascal VOC XML, one file per image; every <object> is taken as a face."""
    raw: _Raw = {}
    skipped: list[Skipped] = []
    for xml in xml_files:
        try:
            root = ET.parse(xml).getroot()
            name = root.findtext("filename")
            if not name:
                raise ValueError("no <filename>")
        except (ET.ParseError, ValueError) as e:
            skipped.append(Skipped(str(xml), f"unreadable VOC annotation ({e})"))
            continue
        candidates = [d / name for d in (image_dir, xml.parent.parent / "JPEGImages", xml.parent) if d]
        path = next((c for c in candidates if c.is_file()), candidates[0])
        faces = raw.setdefault(path, [])
        for k, obj in enumerate(root.iter("object")):
            where = f"{xml}:object{k}"
            try:
                bb = obj.find("bndbox")
                box = tuple(_floats([bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]))
            except (AttributeError, TypeError, ValueError):
                skipped.append(Skipped(where, "missing or non-numeric <bndbox>"))
                continue
            faces.append(_Face(box, None, where))
    return FaceDataset(_validate(raw, skipped), skipped, "voc")


def _keypoints_from_flat(values, stride: int) -> np.ndarray | None:
    """COCO/YOLO-pose style (x, y[, visibility]) * 6; points with visibility 0 are unlabelled. None
    when the values are not 6 points of numbers."""
    if not isinstance(values, (list, tuple)) or len(values) != NUM_KEYPOINTS * stride:
        return None
    try:
        pts = np.asarray(_floats(values), np.float32).reshape(NUM_KEYPOINTS, stride)
    except (TypeError, ValueError):
        return None
    kp = pts[:, :2].copy()
    if stride == 3:
        kp[pts[:, 2] == 0] = np.nan
    return kp


def _coco_images(doc, json_path: Path, skipped: list[Skipped]) -> dict:
    """COCO's "images" as {id: file_name}; an entry without a usable id and file_name is skipped."""
    images = {}
    for k, im in enumerate(doc["images"]):
        where = f"{json_path}:images[{k}]"
        image_id = im.get("id") if isinstance(im, dict) else None
        name = im.get("file_name") if isinstance(im, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not isinstance(name, str) or not name:
            skipped.append(Skipped(where, "an image entry needs an 'id' (number or text) and a 'file_name'"))
            continue
        images[image_id] = name
    return images


def read_coco(json_path: Path, image_dir: Path | None = None) -> FaceDataset:
    """COCO detection JSON. If a category is named 'face', only it is used; else every annotation."""
    try:
        doc = json.loads(json_path.read_text())
        if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
            raise ValueError("no 'images' and 'annotations' at the top")
        if not all(isinstance(doc.get(k, []), list) for k in ("images", "annotations", "categories")):
            raise ValueError("'images', 'annotations' and 'categories' must be lists")
    except ValueError as e:  # json.JSONDecodeError is one
        raise DatasetError(f"{json_path}: not a COCO detection file ({e}); it needs 'images' and 'annotations'") from None
    image_dir = image_dir or (json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent)
    skipped: list[Skipped] = []
    images = _coco_images(doc, json_path, skipped)
    face_ids = {c.get("id") for c in doc.get("categories", []) if isinstance(c, dict) and isinstance(c.get("id"), (int, str))
                and str(c.get("name", "")).lower() == "face"}
    raw: _Raw = {image_dir / name: [] for name in images.values()}
    for k, ann in enumerate(doc["annotations"]):
        where = f"{json_path}:annotations[{k}]"
        if not isinstance(ann, dict):
            skipped.append(Skipped(where, "an annotation must be an object"))
            continue
        category = ann.get("category_id")
        if face_ids and (not isinstance(category, (int, str)) or category not in face_ids):
            continue
        image_id = ann.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in images:
            skipped.append(Skipped(where, f"image_id {repr(image_id)[:40]} not in 'images'"))
            continue
        try:
            if not isinstance(ann.get("bbox"), list):
                raise TypeError("not a list")
            x, y, w, h = _floats(ann["bbox"])
        except (TypeError, ValueError):
            skipped.append(Skipped(where, "missing or malformed 'bbox' (expected [x, y, width, height])"))
            continue
        kp = _keypoints_from_flat(ann.get("keypoints") or [], 3)
        raw[image_dir / images[image_id]].append(_Face((x, y, x + w, y + h), kp, where))
    return FaceDataset(_validate(raw, skipped), skipped, "coco")


def _yolo_label_path(image: Path, root: Path) -> Path:
    rel = image.relative_to(root)
    parts = ["labels" if p == "images" else p for p in rel.parts]
    return root.joinpath(*parts).with_suffix(".txt")


def read_yolo(root: Path) -> FaceDataset:
    """YOLO txt: images/**/x.jpg with labels/**/x.txt lines `class cx cy w h [kx ky [v]]*6`, normalised.
    An image without a label file has no faces (YOLO's convention)."""
    raw: _Raw = {}
    skipped: list[Skipped] = []
    for image in walk_images(root / "images" if (root / "images").is_dir() else root):
        faces = raw.setdefault(image, [])
        label = _yolo_label_path(image, root)
        if not label.is_file():
            continue
        size = _image_size(image)
        if size is None:
            continue  # _validate reports it
        w, h = size
        for n, line in enumerate(label.read_text().splitlines(), 1):
            where = f"{label}:{n}"
            if not line.strip():
                continue
            try:
                _, cx, cy, bw, bh, *rest = _floats(line.split())
            except ValueError as e:
                skipped.append(Skipped(where, f"expected 'class cx cy w h' ({e})"))
                continue
            kp = _keypoints_from_flat(rest, 2 if len(rest) == 2 * NUM_KEYPOINTS else 3)
            if kp is not None:
                kp = kp * np.float32([w, h])
            faces.append(_Face(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), kp, where))
    return FaceDataset(_validate(raw, skipped), skipped, "yolo")


def read_csv(csv_path: Path, image_dir: Path | None = None) -> FaceDataset:
    """CSV rows `image,xmin,ymin,xmax,ymax[,label]` (header optional); a row with only the image
    name lists an image without faces."""
    image_dir = image_dir or csv_path.parent
    raw: _Raw = defaultdict(list)
    skipped: list[Skipped] = []
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            where = f"{csv_path}:{n}"
            if not row or not row[0].strip():
                continue
            if n == 1 and len(row) > 1 and row[1].strip().lower() in ("xmin", "x_min", "x1"):
                continue  # header
            faces = raw[image_dir / row[0].strip()]
            if len(row) == 1 or not any(c.strip() for c in row[1:5]):
                continue
            try:
                box = tuple(_floats([c.strip() for c in row[1:5]]))
                if len(box) != 4:
                    raise ValueError(f"{len(box)} coordinates")
            except ValueError as e:
                skipped.append(Skipped(where, f"expected image,xmin,ymin,xmax,ymax ({e})"))
                continue
            faces.append(_Face(box, None, where))
    return FaceDataset(_validate(dict(raw), skipped), skipped, "csv")


def detect_format(path: Path) -> str:
    """Guess the annotation format of a file or dataset folder."""
    if path.is_file():
        by_suffix = {".json": "coco", ".csv": "csv", ".txt": "wider", ".xml": "voc"}
        if path.suffix.lower() in by_suffix:
            return by_suffix[path.suffix.lower()]
    elif path.is_dir():
        if any(_is_coco(p) for p in path.glob("*.json")):
            return "coco"
        if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
            return "voc"
        if (path / "labels").is_dir():
            return "yolo"
        if any(path.glob("*.csv")):
            return "csv"
        if _wider_file(path):
            return "wider"
    raise DatasetError(f"{path}: cannot tell the annotation format; pass --format one of {', '.join(_READERS)}")


def _is_coco(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "images" in doc and "annotations" in doc


def _wider_file(folder: Path) -> Path | None:
    found = sorted(folder.glob("*bbx_gt*.txt")) + sorted(folder.glob("wider_face_split/*bbx_gt*.txt"))
    return found[0] if found else None


def _single(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise DatasetError(f"{folder}: no {what} file ({pattern}) found")
    if len(found) > 1:
        raise DatasetError(f"{folder}: several {what} files ({', '.join(p.name for p in found)}); pass one file")
    return found[0]


def _wider_dir(folder: Path) -> FaceDataset:
    return read_wider(_wider_file(folder) or _single(folder, "*.txt", "WIDER FACE"))


def _voc_dir(folder: Path) -> FaceDataset:
    return read_voc(sorted((folder / "Annotations").glob("*.xml")) or sorted(folder.glob("*.xml")))


def _coco_dir(folder: Path) -> FaceDataset:
    found = [p for p in sorted(folder.glob("*.json")) if _is_coco(p)]
    return read_coco(found[0] if len(found) == 1 else _single(folder, "*.json", "COCO"))


_READERS = {"wider": _wider_dir, "voc": _voc_dir, "coco": _coco_dir, "yolo": read_yolo,
            "csv": lambda folder: read_csv(_single(folder, "*.csv", "CSV"))}
_FILE_READERS = {"wider": read_wider, "voc": lambda p: read_voc([p]), "coco": read_coco,
                 "yolo": lambda p: read_yolo(p.parent), "csv": read_csv}


def load_faces(path: str | Path, fmt: str = "auto") -> FaceDataset:
    """Read a face dataset (file or folder) in `fmt` (wider, voc, coco, yolo, csv or auto)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in ANNOTATION_FORMATS:
        raise DatasetError(f"unknown annotation format {fmt!r}; choose one of {', '.join(ANNOTATION_FORMATS)}")
    try:
        dataset = _READERS[fmt](path) if path.is_dir() else _FILE_READERS[fmt](path)
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the {fmt} annotations ({e})") from None
    if not dataset.samples:
        raise DatasetError(f"{path}: no usable images in the {fmt} annotations "
                           f"({len(dataset.skipped)} skipped, first: {dataset.skipped[0].reason if dataset.skipped else '-'})")
    return dataset
