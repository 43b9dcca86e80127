"""The near-duplicate rule, shared by `transferlab audit` and train's leakage check: candidates by
feature cosine (and colour thumbnails), confirmed in pixels (data.pixels)."""
from __future__ import annotations

import numpy as np
import torch

# Near duplicates (shared by `transferlab audit` and train's leakage check). Candidates: each image's
# NEAR_DUPLICATE_NEIGHBOURS nearest in penultimate features (at cosine >= NEAR_DUPLICATE_COSINE) and, in
# the audit, in 8x8 colour thumbnails. A candidate is a near duplicate when, in pixels (data.pixels),
#   1. it is as close as the images' own copies are: distance <= NEAR_DUPLICATE_COPY_MARGIN x how far
#      copies made of either image land (data.pixels.copy_tolerance: a re-encoded copy when the two have
#      one size, else the farthest of re-encoded, resized and cropped ones; measured per image), and
#   2. the picture has structure to confirm it: distance <= NEAR_DUPLICATE_CONTRAST x its contrast.
# The first tells copies of a digit from another writer's near-identical digit; the second keeps out
# flat tiles (calm sea, dense forest), which lie as close to one another as to their own copies.
# Measured by `python bench/audit.py --calibrate --per-class 20` (each image and a copy of it re-encoded
# at JPEG quality 55-75, resized to 60-125% or cropped by a few pixels; distinct pairs: each image's 5
# nearest in features and in thumbnails):
#   distance / copies'       copies max   distinct pairs with structure min
#     flowers  (100)         1.28         6.79
#     clothing (200)         1.18         5.08
#     eurosat  (200)         1.08         (none has structure)
#     mnist    (200)         1.27         1.94 (two writers' "1"; none of 5,000 clean digits is within 1.35)
#   distance / contrast: copies max 0.32 on photos and digits, 0.84 on EuroSAT; distinct pairs as close as
#   copies min 1.42 (flat EuroSAT tiles).
# 12 of the 200 EuroSAT copies are of flat tiles (0.88x to 3.8x their contrast; one is a single colour):
# a flat tile's copy cannot be told from another flat tile by its pixels (two calm-sea tiles of contrast
# 0.8 differ by 1.1 grey levels, a re-encoded copy of one by 1.6), so it is not reported.
NEAR_DUPLICATE_COSINE = 0.5
NEAR_DUPLICATE_NEIGHBOURS = 5
NEAR_DUPLICATE_COPY_MARGIN = 1.35
NEAR_DUPLICATE_CONTRAST = 0.85


def normalized_rows(features: torch.Tensor) -> torch.Tensor:
    """Features flattened per image and scaled to unit length (for cosine similarity)."""
    f = features.flatten(1).float()
    return f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)


def nearest_pairs(a: torch.Tensor, b: torch.Tensor | None, threshold: float, k: int,
                  chunk: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for each row i of `a` and its k most similar rows j of `b` (unit-length) at or
    above `threshold`; with b None, within `a` (no self pairs; each unordered pair once, i < j)."""
    same = b is None
    b = a if same else b
    k = min(k, len(b) - (1 if same else 0))
    found: dict[tuple[int, int], float] = {}
    if k <= 0:
        return []
    for start in range(0, len(a), chunk):
        sims = a[start:start + chunk] @ b.T
        if same:
            idx = torch.arange(start, start + len(sims))
            sims[torch.arange(len(sims)), idx] = -2.0
        values, cols = sims.topk(k, dim=1)
        for r, (vs, cs) in enumerate(zip(values.tolist(), cols.tolist())):
            for v, c in zip(vs, cs):
                if v >= threshold:
                    i, j = start + r, c
                    found[(min(i, j), max(i, j)) if same else (i, j)] = v
    return [(i, j, v) for (i, j), v in sorted(found.items())]


def near_duplicate_pairs(a: torch.Tensor, paths_a, b: torch.Tensor | None = None, paths_b=None,
                         cosine: float = NEAR_DUPLICATE_COSINE, k: int = NEAR_DUPLICATE_NEIGHBOURS,
                         pixel_candidates: bool = False) -> list[tuple[int, int, float, float, float]]:
    """(i, j, feature cosine, pixel distance, the farthest own copy's distance) of near-duplicate images
    (the rule: NEAR_DUPLICATE_COPY_MARGIN and NEAR_DUPLICATE_CONTRAST above), i < j within `a` or i in a,
    j in b. Candidates are each image's k nearest in features and, with pixel_candidates, in colour
    thumbnails (every image is read then; otherwise only the candidates)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..core.device import available_cpus
    from ..data.pixels import THUMBNAIL_SIDE, copy_distances, copy_tolerance, pixel_distance, pixel_view

    paths_a = [str(p) for p in paths_a]
    paths_b = paths_a if b is None else [str(p) for p in paths_b]
    bb = a if b is None else b
    candidates = {(i, j) for i, j, _ in nearest_pairs(a, b, cosine, k)}
    with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
        def read(paths, table):
            missing = list(dict.fromkeys(p for p in paths if p not in table))
            table.update(zip(missing, pool.map(pixel_view, missing)))

        views: dict[str, object] = {}
        if pixel_candidates:
            read(paths_a + (paths_b if b is not None else []), views)

            def thumbnails(paths):
                # an unreadable image sits far from every thumbnail (it is no candidate)
                return torch.from_numpy(np.stack([views[p].thumbnail() if views[p] is not None
                                                  else np.full(3 * THUMBNAIL_SIDE ** 2, 1e6, np.float32)
                                                  for p in paths]))

            ta = thumbnails(paths_a)
            tb = ta if b is None else thumbnails(paths_b)
            for start in range(0, len(ta), 1024):
                d = torch.cdist(ta[start:start + 1024], tb)
                if b is None:
                    d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")
                for r, cols in enumerate(d.topk(min(k, d.shape[1] - (b is None)), largest=False).indices.tolist()):
                    i = start + r
                    candidates |= {(min(i, j), max(i, j)) if b is None else (i, j) for j in cols}
        read([paths_a[i] for i, _ in candidates] + [paths_b[j] for _, j in candidates], views)
        close = []
        for i, j in sorted(candidates):
            va, vb = views[paths_a[i]], views[paths_b[j]]
            if va is None or vb is None or (b is None and i == j):
                continue
            d = pixel_distance(va, vb)
            if d <= NEAR_DUPLICATE_CONTRAST * min(va.contrast, vb.contrast):
                close.append((i, j, d))
        involved = list(dict.fromkeys([paths_a[i] for i, _, _ in close] + [paths_b[j] for _, j, _ in close]))
        copies = dict(zip(involved, pool.map(copy_distances, involved)))
    out = []
    for i, j, d in close:
        ca, cb = copies[paths_a[i]], copies[paths_b[j]]
        if ca is None or cb is None:
            continue
        own = copy_tolerance(views[paths_a[i]], views[paths_b[j]], ca, cb)
        if d <= NEAR_DUPLICATE_COPY_MARGIN * own:
            out.append((i, j, float(a[i] @ bb[j]), d, own))
    return out
