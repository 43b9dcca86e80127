"""Benchmark: the cost of a class-activation heatmap next to the prediction it explains, on CPU.

    python bench/explain.py [--repeats 15] [--threads N] [--method gradcam] [--model efficientnet_lite0]

On one real photo (scikit-image's astronaut, 512 x 512 JPEG), in the same process and interleaved, so
both sides see the same machine load:
  predict          Classifier.predict([image])                        decode, transform, forward, top-5
  predict+explain  Classifier.predict([image], explain=DIR)           the same, then the map and its PNG
  forward          the model's forward on the preprocessed tensor     (the engine alone)
  map              inference/explain.cam_maps on the same tensor      (forward + the tail's backward)
The claim: predict+explain / predict <= 3 (issue 27). Medians of --repeats runs; the load average
(1 minute) before and after is printed, since the cores may be shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from skimage.data import astronaut

    from transferlab.api import load
    from transferlab.inference.explain import cam_maps, model_view

    if args.threads:
        torch.set_num_threads(args.threads)
    clf = load(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    image = work / "astronaut.jpg"
    Image.fromarray(astronaut()).save(image, quality=92)
    batch = clf.transform.normalize(model_view(clf, image)[None])
    top = clf.predict([image], num_workers=0)[0]["top"][0]["index"]
    clf.predict([image], num_workers=0, explain=work / "maps", explain_method=args.method)  # imports, warm-up

    def forward():
        with torch.inference_mode():
            clf.model.eval()(batch)

    cases = {
        "predict": lambda: clf.predict([image], num_workers=0),
        "predict+explain": lambda: clf.predict([image], num_workers=0, explain=work / "maps",
                                               explain_method=args.method),
        "forward": forward,
        "map": lambda: cam_maps(clf.model, batch, [top], args.method),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, fn in cases.items():  # interleaved: a burst of load hits every case alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# explain bench: {args.model}, {args.method}, {args.repeats} repeats, torch threads "
          f"{torch.get_num_threads()}, CPUs {os.cpu_count()}, load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'case':<16} {'median ms':>10} {'min ms':>8}")
    for k in cases:
        print(f"{k:<16} {1000 * med[k]:10.1f} {1000 * min(times[k]):8.1f}")
    ratio = med["predict+explain"] / med["predict"]
    print(f"ratio predict+explain / predict: {ratio:.2f} (claim: <= 3)")
    print(f"ratio map / forward: {med['map'] / med['forward']:.2f}")
    return 0 if ratio <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
