"""Each annotation format: good faces parsed, bad ones reported and skipped."""
import json

import numpy as np
import pytest
from PIL import Image

from transferlab.detect.data import detect_format, load_faces
from transferlab.core.errors import DatasetError

W, H = 100, 80


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (120, 90, 60)).save(path)


def reasons(dataset):
    return " | ".join(s.reason for s in dataset.skipped)


def check(dataset, fmt, n_images=1):
    assert dataset.format == fmt
    assert len(dataset.samples) == n_images
    sample = next(s for s in dataset.samples if len(s.boxes))
    np.testing.assert_allclose(sample.boxes[0], [10, 20, 40, 50])
    text = reasons(dataset)
    assert "outside image" in text and "zero or negative area" in text and "image file missing" in text
    return sample


def test_wider(tmp_path):
    image(tmp_path / "images" / "0--Parade" / "a.jpg")
    image(tmp_path / "images" / "0--Parade" / "empty.jpg")
    (tmp_path / "wider_face_train_bbx_gt.txt").write_text(
        "0--Parade/a.jpg\n4\n"
        "10 20 30 30 0 0 0 0 0 0 \n"
        "90 70 30 30 0 0 0 0 0 0 \n"      # runs past the right and bottom edges
        "10 20 0 30 0 0 0 0 0 0 \n"       # zero width
        "10 20 30 30 0 0 0 1 0 0 \n"      # flagged invalid
        "0--Parade/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
        "0--Parade/missing.jpg\n1\n1 1 5 5 0 0 0 0 0 0 \n")
    assert detect_format(tmp_path) == "wider"
    ds = load_faces(tmp_path)
    check(ds, "wider", n_images=2)
    assert "marked invalid" in reasons(ds)
    assert sum(len(s.boxes) for s in ds.samples) == 1


def test_voc(tmp_path):
    image(tmp_path / "JPEGImages" / "a.jpg")
    obj = "<object><name>face</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text("<annotation><filename>a.jpg</filename>" + obj.format(10, 20, 40, 50)
                               + obj.format(-30, 20, 40, 50) + obj.format(10, 20, 10, 50) + "</annotation>")
    (ann / "b.xml").write_text("<annotation><filename>missing.jpg</filename>" + obj.format(1, 1, 5, 5) + "</annotation>")
    (ann / "broken.xml").write_text("<annotation><filename>a.jpg")
    assert detect_format(tmp_path) == "voc"
    ds = load_faces(tmp_path)
    check(ds, "voc")
    assert "unreadable VOC annotation" in reasons(ds)


def test_coco_with_keypoints(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    kps = [12, 25, 2, 30, 25, 2, 20, 32, 2, 20, 40, 2, 0, 0, 0, 0, 0, 0]
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "missing.jpg"}],
           "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "hand"}],
           "annotations": [
               {"image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 30], "keypoints": kps},
               {"image_id": 1, "category_id": 1, "bbox": [80, 60, 50, 50]},
               {"image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 0]},
               {"image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},     # not a face: ignored
               {"image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},
               {"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    assert detect_format(tmp_path) == "coco"
    ds = load_faces(tmp_path)
    sample = check(ds, "coco")
    np.testing.assert_allclose(sample.keypoints[0, :4], [[12, 25], [30, 25], [20, 32], [20, 40]])
    assert np.isnan(sample.keypoints[0, 4:]).all()
    assert "image_id 9" in reasons(ds)


def test_yolo_with_pose_keypoints(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "negative.jpg")
    labels = tmp_path / "labels"
    labels.mkdir()
    pose = " ".join(f"{x / W} {y / H} 2" for x, y in [(15, 30), (35, 30), (25, 38), (25, 45), (10, 35), (40, 35)])
    (labels / "a.txt").write_text(f"0 0.25 0.4375 0.3 0.375 {pose}\n"
                                  "0 0.95 0.95 0.3 0.3\n"
                                  "0 0.5 0.5 0.0 0.2\n"
                                  "0 oops\n")
    assert detect_format(tmp_path) == "yolo"
    ds = load_faces(tmp_path)
    assert len(ds.samples) == 2 and ds.num_faces == 1
    face = next(s for s in ds.samples if len(s.boxes))
    np.testing.assert_allclose(face.boxes[0], [10, 20, 40, 50], atol=1e-4)
    np.testing.assert_allclose(face.keypoints[0, 0], [15, 30], atol=1e-4)
    text = reasons(ds)
    assert "outside image" in text and "zero or negative area" in text and "expected 'class cx cy w h'" in text


def test_csv(tmp_path):
    image(tmp_path / "a.jpg")
    image(tmp_path / "none.jpg")
    (tmp_path / "faces.csv").write_text("image,xmin,ymin,xmax,ymax,label\n"
                                        "a.jpg,10,20,40,50,face\n"
                                        "a.jpg,50,50,150,70,face\n"
                                        "a.jpg,10,20,40,20,face\n"
                                        "a.jpg,ten,20,40,50,face\n"
                                        "none.jpg\n"
                                        "missing.jpg,1,1,5,5,face\n")
    assert detect_format(tmp_path) == "csv"
    ds = check(load_faces(tmp_path), "csv", n_images=2)
    assert ds.keypoints.shape == (1, 6, 2) and np.isnan(ds.keypoints).all()


def test_box_one_pixel_past_the_edge_is_clipped_not_skipped(tmp_path):
    image(tmp_path / "a.jpg")
    (tmp_path / "faces.csv").write_text("a.jpg,-0.5,10,100.8,80.5\n")
    ds = load_faces(tmp_path / "faces.csv")
    assert not ds.skipped
    np.testing.assert_allclose(ds.samples[0].boxes[0], [0, 10, 100, 80])


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "cannot tell the annotation format"),
    (lambda p: (p / "x.csv").write_text("missing.jpg,1,1,5,5\n"), "no usable images"),
])
def test_unusable_datasets_are_one_line_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_faces(tmp_path)


def test_bad_format_name_and_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_faces(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown annotation format"):
        load_faces(tmp_path, "kitti")


def test_wider_official_layout(tmp_path):
    image(tmp_path / "WIDER_val" / "images" / "0--Parade" / "a.jpg")
    split = tmp_path / "wider_face_split"
    split.mkdir()
    (split / "wider_face_val_bbx_gt.txt").write_text("0--Parade/a.jpg\n1\n10 20 30 30 0 0 0 0 0 0 \n")
    for path in (tmp_path, split / "wider_face_val_bbx_gt.txt"):
        ds = load_faces(path)
        assert ds.format == "wider" and ds.num_faces == 1 and not ds.skipped


def test_undecodable_annotation_file_is_a_dataset_error(tmp_path):
    (tmp_path / "faces.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot read the csv annotations"):
        load_faces(tmp_path)
