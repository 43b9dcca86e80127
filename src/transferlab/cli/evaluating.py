"""`transferlab evaluate` and `transferlab export`, for a run folder of either kind."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.io import atomic_write_json
from ..runs.folder import is_run_folder
from .commands import tta_setting


def cmd_evaluate(args) -> int:
    """Evaluate and print (or write) the result; a classifier's confusion matrix is also drawn."""
    from ..api import evaluate, load

    net = load(args.model, tta=tta_setting(args))
    if net.kind == "detector":
        if any(getattr(args, k, None) is not None for k in ("val_data", "image_col", "label_col", "label_delim")):
            from ..core.errors import TransferlabError

            raise TransferlabError("--val, --image-col, --label-col and --label-delim apply to a classifier's table; "
                                   "a detector reads its annotations with --format")
        result = evaluate(net, args.data, format=args.format, plot=args.plot)
        if is_run_folder(args.model):
            _write_run_view(args.model, result)
        text = "\n".join([result["summary"]] + [f"AP@0.5 {ap:.4f}  {name}" for name, ap in result["ap50"].items()]
                         + ([f"precision/recall curve: {result['plot']}"] if result["plot"] else []))
    else:
        from ..data.tables import as_table
        from ..inference.evaluation import evaluate_folder, format_evaluation
        from ..runs.report import plot_confusion, plot_label_pr_curves

        result = evaluate_folder(net, as_table(args.data, args), device=args.device, progress=not args.json,
                                 keep_predictions=True, threshold=args.threshold)
        predictions = result.pop("predictions")
        name = "eval_pr_curves.png" if net.multilabel else "eval_confusion.png"
        png = Path(args.plot) if args.plot else (Path(args.model) / name if Path(args.model).is_dir() else Path(name))
        if net.multilabel:
            plot_label_pr_curves(predictions, result["classes"], png, f"precision/recall: {result['split']}")
            text = format_evaluation(result) + f"\nprecision/recall curves: {png}"
        else:
            plot_confusion(result["confusion"], result["classes"], png, title=f"confusion: {result['split']}")
            text = format_evaluation(result) + f"\nconfusion matrix image: {png}"
        if is_run_folder(args.model):
            from ..inference.explain import error_heatmaps

            error_heatmaps(net, args.model, {"evaluate": result})  # heatmaps of the most confidently wrong
            text += f"\nRun view: {_write_run_view(args.model, {**result, 'predictions': predictions})}"
    if args.json == "-":
        print(json.dumps(result, indent=2, default=str))
    else:
        if args.json:
            atomic_write_json(args.json, result)
        print(text)
    return 0


def _write_run_view(run, result: dict) -> Path:
    """Keep the evaluation in RUN/evaluation.json (as "evaluate") and rewrite RUN/report.html."""
    from ..runs.html import write_html_report
    from ..runs.view import write_evaluations

    write_evaluations(run, {"evaluate": result})
    return write_html_report(run)


def cmd_export(args) -> int:
    """Export and print where it went and how closely it reproduces PyTorch."""
    from ..api import export

    options = {}
    if args.quantize:
        options = {"quantize": args.quantize, "max_drop": args.max_drop, "calibration": args.calibration,
                   "data": args.data}
        if args.calibration_method:
            options["calibration_method"] = args.calibration_method
    elif args.calibration_method or args.data:
        from ..core.errors import TransferlabError

        raise TransferlabError("--calibration-method and --data apply only with --quantize")
    result = export(args.model, format=args.format, out=args.out, **options)
    print(f"exported {result.path} (how to feed it: {result.sidecar})")
    if result.max_abs_diff is not None:
        print(f"max abs diff vs PyTorch: {result.max_abs_diff:.2e}")
    if result.quantization:
        print(format_quantization(result.quantization))
    return 0


def format_quantization(q: dict) -> str:
    """The export-time measurements of a quantized model next to the float one's."""
    metric = q.get("metric", "accuracy")
    lines = [f"{q['mode']} vs float on {q['validation']['images']} validation images ({q['validation']['source']}):",
             f"  {'':9} {'mAP' if metric == 'map' else metric:>9} {'size MB':>8} {'img/s b1':>9} {'img/s b32':>10}"]
    for name in ("float", "quantized"):
        m = q[name]
        speed = m.get("images_per_s", {})
        lines.append(f"  {name:9} {m[metric]:9.4f} {m['size_bytes'] / 1e6:8.2f} {speed.get('1', float('nan')):9.1f} "
                     f"{speed.get('32', float('nan')):10.1f}")
    if metric == "map":  # a multi-label classifier: decisions per (image, label) at its thresholds
        lines.append(f"  label-decision agreement {q['agreement']:.1%}, drop {q['drop_points']:.2f} mAP points")
    elif "agreement" in q:
        lines.append(f"  top-1 agreement {q['agreement']:.1%}, drop {q['accuracy_drop_points']:.2f} points")
    else:
        lines.append(f"  drop {q['drop_points']:.2f} points")
    cal = q.get("calibration", {})
    if cal.get("skipped"):
        lines.append(f"  {len(cal['skipped'])} calibration image(s) skipped:")
        lines += [f"    {p}: {why}" for p, why in cal["skipped"][:10]]
    lines.append(f"  report: {Path(q.get('report', 'quantization.json'))}")
    return "\n".join(lines)
