"""The on-disk cache of decoded, resized images: same pixels as decoding, reused, invalidated by content."""
from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from transferlab.data.folders import DecodedImages, ImageCache


def _photos(sample_photos, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for name, src in sample_photos.items():
        dst = folder / f"{name}.jpg"
        shutil.copy(src, dst)
        paths.append(dst)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return paths, folder / "broken.jpg"


def test_disk_cache_gives_the_decoded_pixels_and_is_reused(sample_photos, tmp_path):
    paths, broken = _photos(sample_photos, tmp_path)
    cache = tmp_path / "cache"
    plain = DecodedImages(paths + [broken], max_side=96)
    first = DecodedImages(paths + [broken], max_side=96, cache_dir=cache)
    entries = sorted((cache / "images").rglob("*.npy"))
    assert len(entries) == len(paths) and first.cache_hits == 0
    assert set(first.failed) == set(plain.failed) == {str(broken)}
    stamps = {e: e.stat().st_mtime_ns for e in entries}
    second = DecodedImages(paths + [broken], max_side=96, cache_dir=cache)
    assert second.cache_hits == len(paths)
    assert {e: e.stat().st_mtime_ns for e in entries} == stamps, "a hit must read, not rewrite"
    for p in paths:
        a, b, c = (np.asarray(d[p]) for d in (plain, first, second))
        assert min(a.shape[:2]) == 96 and a.dtype == np.uint8
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_disk_cache_is_keyed_by_content_and_size(sample_photos, tmp_path):
    paths, _ = _photos(sample_photos, tmp_path)
    cache = tmp_path / "cache"
    DecodedImages(paths, max_side=96, cache_dir=cache)
    assert DecodedImages(paths, max_side=64, cache_dir=cache).cache_hits == 0  # another size: new entries
    # same name, new content: decoded again, with the new pixels
    Image.new("RGB", (300, 200), (255, 0, 0)).save(paths[0])
    again = DecodedImages(paths, max_side=96, cache_dir=cache)
    assert again.cache_hits == len(paths) - 1
    r, g, b = np.asarray(again[paths[0]])[0, 0].tolist()
    assert r > 240 and g < 15 and b < 15  # red (JPEG-rounded)


def test_damaged_cache_entry_is_decoded_again(sample_photos, tmp_path):
    paths, _ = _photos(sample_photos, tmp_path)
    cache = tmp_path / "cache"
    ref = DecodedImages(paths, max_side=96, cache_dir=cache)
    for entry in (cache / "images").rglob("*.npy"):
        entry.write_bytes(entry.read_bytes()[:50])
    redo = DecodedImages(paths, max_side=96, cache_dir=cache)
    assert redo.cache_hits == 0
    assert all(np.array_equal(np.asarray(ref[p]), np.asarray(redo[p])) for p in paths)
    assert DecodedImages(paths, max_side=96, cache_dir=cache).cache_hits == len(paths)  # rewritten


def test_image_cache_key_ignores_name_not_content(sample_photos, tmp_path):
    """The same bytes under another name, folder or extension hit the entry; other bytes under the
    same name miss it (through DecodedImages, which is what hands the cache its files)."""
    china, flower = sample_photos["china"].read_bytes(), sample_photos["flower"].read_bytes()
    a, renamed, same_name = tmp_path / "a" / "one.jpg", tmp_path / "b" / "copy of one.JPEG", tmp_path / "c" / "one.jpg"
    for path, data in ((a, china), (renamed, china), (same_name, flower)):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    cache_dir = tmp_path / "cache"
    first = DecodedImages([a], max_side=64, cache_dir=cache_dir)
    assert first.cache_hits == 0
    again = DecodedImages([renamed, same_name], max_side=64, cache_dir=cache_dir)
    assert again.cache_hits == 1  # the renamed copy, not the other photo that shares a's name
    assert len(list((cache_dir / "images").rglob("*.npy"))) == 2
    assert np.array_equal(np.asarray(again[renamed]), np.asarray(first[a]))
    assert not np.array_equal(np.asarray(again[same_name]), np.asarray(first[a]))  # the other photo's pixels
    cache = ImageCache(cache_dir)
    assert cache.key(china, 256) != cache.key(flower, 256)
    assert cache.key(china, 256) != cache.key(china, 224)


def test_training_with_cache_dir_fills_the_image_cache(digits_folder, tmp_path):
    from transferlab.api import train

    cache = tmp_path / "cache"
    opts = dict(model="efficientnet_lite0", strategy="feature-extract", image_size=48, batch_size=16, augment="none",
                epochs=1, progress=False, cache_dir=str(cache), cache_features="off", workers=0)
    first = train(digits_folder, out=tmp_path / "r1", **opts)
    n = len(list((cache / "images").rglob("*.npy")))
    assert n == sum(1 for _ in digits_folder.rglob("*.png"))
    second = train(digits_folder, out=tmp_path / "r2", **opts)
    assert len(list((cache / "images").rglob("*.npy"))) == n
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]


def test_decoded_validation_images_give_the_files_own_tensors(sample_photos, tmp_path):
    import torch

    from transferlab.data.images import open_image
    from transferlab.models import create_model

    paths, _ = _photos(sample_photos, tmp_path)
    pre = create_model("efficientnet_lite0", num_classes=2, weights="none").preprocessing  # bicubic, 256 -> 224
    decoded = DecodedImages(paths, max_side=pre.decode_side("none"), interpolation=pre.interpolation)
    transform = pre.eval_transform()
    for p in paths:
        assert torch.equal(transform(decoded[p]), transform(open_image(p))), p.name


def test_training_images_keep_the_pixels_augmentation_crops_need(sample_photos, tmp_path):
    from transferlab.models import create_model
    from transferlab.data.transforms import CROP_SCALES

    pre = create_model("efficientnet_lite0", num_classes=2, weights="none").preprocessing
    assert pre.decode_side("none") == pre.resize == 256
    light = pre.decode_side("light")
    # the smallest light crop (35% of the area) still has input_size pixels across: no upsampling
    assert light * CROP_SCALES["light"][0] ** 0.5 >= pre.input_size and light == 379
    assert pre.decode_side("strong") == 2 * pre.resize
    paths, _ = _photos(sample_photos, tmp_path)
    decoded = DecodedImages(paths, max_side=light, interpolation=pre.interpolation)
    assert all(min(decoded[p].size) == min(light, min(Image.open(p).size)) for p in paths)
