"""predict's fast paths must not change what it predicts: reduced-size decoding against full decoding and
the reference transform on real photos, the decoding pipeline's order and bounds, the cached ONNX export."""
from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import transferlab
from transferlab.data.images import map_in_threads, open_image
from transferlab.deploy import runtime

# the largest probability difference measured over the seven photos in four kinds (JPEG 2400 and
# 4000 px wide, PNG 1600 px, grey PNG 1100 px) was 0.030; one top-1 swapped, a near tie
PROB_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def clf():
    return transferlab.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory):
    """scikit-image and scikit-learn photos enlarged: JPEG 2400 px wide, RGB PNG 1600 px, grey PNG 1100x1100."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("large")
    photos = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), *load_sample_images().images]
    paths = []
    for i, photo in enumerate(photos):
        img = Image.fromarray(np.asarray(photo)[..., :3])
        for name, size, mode in (("jpg", (2400, 1800), "RGB"), ("png", (1600, 1200), "RGB"),
                                 ("grey.png", (1100, 1100), "L")):
            path = out / f"{i}.{name}"
            img.resize(size, Image.BICUBIC).convert(mode).save(path, **({"quality": 92} if name == "jpg" else {}))
            paths.append(path)
    return paths


def test_reduced_decoding_predicts_as_full_decoding(clf, large_photos):
    for path in large_photos:  # every one of them is reduced, keeping twice the resize's pixels
        full, small = Image.open(path), open_image(path, min_size=clf.preprocessing.resize)
        assert min(full.size) > min(small.size) >= 2 * clf.preprocessing.resize, path
    records = clf.predict(large_photos, top=1000, backend="torch", num_workers=2, progress=False)
    reference = clf.preprocessing.eval_transform()
    with torch.inference_mode():
        for path, record in zip(large_photos, records):
            x = reference(Image.open(path).convert("RGB")).unsqueeze(0)
            exact = torch.softmax(clf.model.eval()(x), 1)[0]
            got = torch.zeros_like(exact)
            got[[t["index"] for t in record["top"]]] = torch.tensor([t["prob"] for t in record["top"]])
            # the same top-1, or a near tie swapped (1 of 21: the grey daisy, 0.219 daisy / 0.203 honeycomb)
            assert float(exact[record["top"][0]["index"]]) >= float(exact.max()) - PROB_TOLERANCE, path
            assert float((got - exact).abs().max()) <= PROB_TOLERANCE, path


def test_pipeline_keeps_order_and_bounds_its_lookahead():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.001 * (i % 3))  # out-of-order finishing
        return i * i

    results = []
    for i, value in enumerate(map_in_threads(work, range(40), threads=3, ahead=5)):
        results.append(value)
        assert len(started) <= i + 1 + 5 + 1, "decoded too far ahead of the consumer"
    assert results == [i * i for i in range(40)]
    assert list(map_in_threads(work, range(4), threads=0, ahead=2)) == [0, 1, 4, 9]


def test_onnx_export_cached_for_the_next_process(clf, tmp_path, monkeypatch, sample_photos):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    photos = [tmp_path / f"flower{i}.jpg" for i in range(runtime.ONNX_CACHED_MIN_IMAGES)]
    for path in photos:
        shutil.copy(sample_photos["flower"], path)
    first = clf.predict(photos, top=3, backend="onnxruntime", progress=False)
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reading the cache")

    monkeypatch.setattr(runtime, "export_onnx", no_export)
    again = transferlab.load("efficientnet_lite0")  # another process would start like this: no engine built
    assert again.predict(photos[:1], top=3, progress=False)[0]["top"] and again.last_backend == "torch"
    second = again.predict(photos, top=3, progress=False)  # auto: the cached export is worth opening
    assert again.last_backend == "onnxruntime"
    assert [t["index"] for t in second[0]["top"]] == [t["index"] for t in first[0]["top"]]
