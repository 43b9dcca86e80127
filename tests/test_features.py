"""Frozen-prefix feature caching: equal to recomputing, keyed so that a stale cache is never used."""
from __future__ import annotations

import shutil

import torch
from PIL import Image

from transferlab.training.features import FeatureStore, TensorBatches, feature_cache_key
from transferlab.models import create_model
from transferlab.data.transforms import Preprocessing
from transferlab.api import train

FAST = dict(image_size=48, batch_size=16, augment="none", seed=0, epochs=2)


def test_cached_features_equal_the_frozen_prefix_forward(digits_folder, tmp_path):
    from transferlab.data.folders import ImageSamples, scan_dataset
    from transferlab.training.features import prefix_features
    from torch.utils.data import DataLoader

    model = create_model("efficientnet_lite0", num_classes=4)
    pre = model.preprocessing.resized(48)
    scan = scan_dataset(digits_folder)
    loader = DataLoader(ImageSamples(scan.splits["val"], pre.eval_transform()), batch_size=8)
    n = len(model.block_names) - 1
    cached = prefix_features(model, n, loader, torch.device("cpu"))
    x = torch.stack([pre.eval_transform()(Image.open(s.path).convert("RGB")) for s in scan.splits["val"][:5]])
    with torch.no_grad():
        direct = model.eval().forward_blocks(x, 0, n)
    torch.testing.assert_close(cached[:5], direct, atol=1e-5, rtol=1e-5)
    assert cached.shape == (len(scan.splits["val"]), model.num_features)


def test_cached_and_uncached_feature_extraction_reach_the_same_accuracy(digits_folder, tmp_path):
    cached = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "a",
                   progress=False, cache_features="on", **FAST)
    plain = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "b",
                  progress=False, cache_features="off", workers=0, **FAST)
    assert abs(cached.metrics["val_acc"] - plain.metrics["val_acc"]) <= 0.1


def test_cache_dir_is_reused_and_invalidated_by_content(digits_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    cache = tmp_path / "cache"
    first = train(data, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "r1",
                  progress=False, cache_dir=str(cache), **FAST)
    files = sorted(cache.glob("features-*.safetensors"))
    assert len(files) == 2  # train view + val
    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = train(data, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "r2",
                   progress=False, cache_dir=str(cache), **FAST)
    assert sorted(cache.glob("features-*.safetensors")) == files
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files), "second run must read, not rewrite, the cache"
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    # same file name, new content: the key changes, so new features are computed
    victim = sorted(data.glob("digit_0/*.png"))[0]
    Image.new("L", (32, 32), 255).save(victim)
    train(data, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "r3", progress=False,
          cache_dir=str(cache), **FAST)
    assert len(list(cache.glob("features-*.safetensors"))) > 2


def test_cache_key_depends_on_weights_freeze_and_preprocessing(digits_folder):
    paths = sorted(digits_folder.glob("*/*.png"))[:4]
    model = create_model("resnet18", num_classes=3, weights="none")
    pre = Preprocessing()
    base = feature_cache_key(model, 3, pre, paths, "eval", 0)
    assert feature_cache_key(model, 3, pre, paths, "eval", 0) == base
    assert feature_cache_key(model, 4, pre, paths, "eval", 0) != base
    assert feature_cache_key(model, 3, pre.resized(64), paths, "eval", 0) != base
    assert feature_cache_key(model, 3, pre, paths, "light-1", 0) != base
    # the clean view is the same under every seed (audit and train share it); augmented views are not
    assert feature_cache_key(model, 3, pre, paths, "eval", 7) == base
    assert feature_cache_key(model, 3, pre, paths, "light-1", 7) != feature_cache_key(model, 3, pre, paths, "light-1", 0)
    assert feature_cache_key(model, 3, pre, paths, "eval", 0, decode_side=379) != base
    with torch.no_grad():
        next(model.blocks["stem"].parameters()).add_(1.0)
    assert feature_cache_key(model, 3, pre, paths, "eval", 0) != base


def test_damaged_cache_file_is_ignored(tmp_path):
    store = FeatureStore(tmp_path)
    store.put("k", torch.ones(3, 2))
    assert torch.equal(store.get("k"), torch.ones(3, 2))
    store.path("k").write_bytes(store.path("k").read_bytes()[:20])
    assert store.get("k") is None


def test_tensor_batches_shard_evenly_across_processes():
    features, labels = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    seen = []
    lengths = set()
    for rank in range(3):
        g = torch.Generator().manual_seed(5)
        batches = list(TensorBatches(features, labels, 2, shuffle=True, generator=g, rank=rank, world=3))
        lengths.add(sum(len(y) for _, y in batches))
        seen += [int(v) for _, y in batches for v in y]
    assert lengths == {4}  # padded to equal work per process
    assert set(seen) == set(range(10))


def test_tensor_batches_make_several_passes_each_a_fresh_order():
    features, labels = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    batches = TensorBatches(features, labels, 4, shuffle=True, generator=torch.Generator().manual_seed(0), passes=3)
    seen = [int(v) for _, y in batches for v in y]
    assert len(batches) == 9 and len(list(batches)) == 9  # 3 batches a pass
    passes = [seen[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes) and passes[0] != passes[1]


def test_auto_reuses_the_advisors_features_each_at_its_images_row(digits_folder, tmp_path, monkeypatch):
    """train --strategy auto: the measuring pass's features stand in the clean view's rows of the images it
    measured, so the feature pass runs only over the others; the assembled view equals computing it all."""
    from torch.utils.data import DataLoader

    from transferlab.advice import measure
    from transferlab.data.folders import ImageSamples
    from transferlab.training import batches
    from transferlab.training.features import prefix_features

    sample = measure.sample_per_class
    monkeypatch.setattr(measure, "sample_per_class", lambda *a, **k: sample(*a, **{**k, "per_class": 20}))
    original, seen = batches.BatchSource.cached_features, {}

    def spy(self, model, prefix):
        views, val = original(self, model, prefix)
        if not seen:
            train_samples = self.scan.splits["train"]
            loader = DataLoader(ImageSamples(train_samples, self.pre.eval_transform()), batch_size=16)
            seen.update(computed=self.features_computed, train=len(train_samples), val=len(val),
                        clean=views[0], direct=prefix_features(model, prefix, loader, torch.device("cpu")))
        return views, val

    monkeypatch.setattr(batches.BatchSource, "cached_features", spy)
    run = train(digits_folder, strategy="auto", out=tmp_path / "auto", progress=False, **FAST)
    sampled = run.predictor.meta["advice"]["measurements"]["sampled"]
    assert sampled == 4 * 20 < seen["train"]
    assert seen["computed"] == seen["train"] - sampled + seen["val"]  # augment none: one view
    torch.testing.assert_close(seen["clean"], seen["direct"], atol=1e-4, rtol=1e-4)


def test_kept_features_are_only_for_the_same_blocks_and_preprocessing(digits_folder):
    from transferlab.advice.measure import measure
    from transferlab.data.folders import scan_dataset
    from transferlab.training.features import CleanFeatures

    kept = CleanFeatures()
    m = measure(digits_folder, image_size=48, reuse=kept)
    paths = [s.path for s in scan_dataset(digits_folder).splits["train"]]
    model = create_model("efficientnet_lite0", num_classes=4)  # a new head: the blocks before it are the same
    n = len(model.block_names) - 1
    assert len(kept.rows(model, n, model.preprocessing.resized(48), paths)) == m.sampled > 0
    assert kept.rows(model, n, model.preprocessing.resized(64), paths) == {}
    assert kept.rows(model, n - 1, model.preprocessing.resized(48), paths) == {}
    other = create_model("efficientnet_lite0", num_classes=4, weights="none")
    assert kept.rows(other, n, other.preprocessing.resized(48), paths) == {}
