"""``posegs bench dynamic``: moving objects with motion groups on vs off.

Synthesizes the default sequence with a moving textured box (``posegs synth --dynamic``) and
the static default sequence, replays them with ``dynamic.enabled`` on and off, and prints one
Markdown table: camera ATE (Sim(3)), deblurred PSNR over the whole image and inside the moving
object's ground-truth mask, and the IoU of the detected moving-object mask with the ground truth.

``--suite`` instead runs the configuration as given (defaults unless ``--preset`` / ``--set``)
on several object motions (:data:`SUITE`: the swinging box, a large fast box sliding across
the view, two boxes crossing, a box spinning in place, a small slow box) and on the same
camera trajectory without objects (same seed: the camera path does not depend on the
objects), and prints one row per variant with the issue's targets: camera ATE against the
object-free run's, mask IoU, PSNR inside the objects' masks and over the whole image, each
against the blurred input's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ._markdown import cell, finish, last_row, replay_seconds, select, table

# name -> posegs synth settings (SynthConfig fields, dynamic=True) of the suite's variants
SUITE: dict[str, dict[str, Any]] = {
    "swing": {},
    "large fast slide": {"object_motion": "slide", "object_size": 0.7, "object_speed": 1.4},
    "two boxes crossing": {"object_motion": "slide", "objects": 2},
    "spin in place": {"object_motion": "spin"},
    "small slow swing": {"object_size": 0.3, "object_speed": 0.5},
}
# the targets of a suite row: ATE <= ATE_RATIO x the object-free run's; IoU >= MIN_IOU;
# PSNR in the objects and over the image >= the input's + MIN_GAIN_DB
ATE_RATIO, MIN_IOU, MIN_GAIN_DB = 1.5, 0.6, 3.0

RUNS: list[tuple[str, bool, bool]] = [
    # (name, dynamic sequence, motion groups on)
    ("dynamic sequence, groups on", True, True),
    ("dynamic sequence, groups off", True, False),
    ("static sequence, groups on", False, True),
    ("static sequence, groups off", False, False),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..replay import add_config_arguments

    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(str(i) for i in range(len(RUNS))),
                        help="comma-separated subset of the runs, by number: "
                        + "; ".join(f"{i} = {name}" for i, (name, _, _) in enumerate(RUNS)))
    parser.add_argument("--suite", action="store_true",
                        help=f"the configuration as given on the suite's object motions ({', '.join(SUITE)}) and on "
                        "the same camera path without objects, instead of the groups on / off runs")
    parser.add_argument("--variants", default=",".join(SUITE), help="with --suite: comma-separated subset")
    add_config_arguments(parser, " for every run")
    parser.add_argument("--work", type=Path, default=None, help="keep sequences and outputs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return run_suite(args)
    from ..replay import config_from_args, replay
    from ..synth import SynthConfig, generate, write

    try:
        selected = [RUNS[int(i)] for i in args.runs.split(",") if i.strip()]
    except (ValueError, IndexError):
        raise SystemExit(f"--runs takes numbers 0..{len(RUNS) - 1}, got {args.runs!r}") from None
    with tempfile.TemporaryDirectory(prefix="posegs-dynamic-") as tmp:
        work = args.work or Path(tmp)
        data: dict[bool, Path] = {}
        for dynamic in sorted({dynamic for _, dynamic, _ in selected}, reverse=True):
            seq = generate(SynthConfig(seed=args.seed, frames=args.frames, dynamic=dynamic))
            data[dynamic] = write(seq, work / ("dynamic" if dynamic else "static"), force=True)
        rows = []
        for name, dynamic, groups in selected:
            cfg = config_from_args(args, {"dynamic.enabled": groups})
            print(f"running '{name}' ...", flush=True)
            out = work / name.replace(" ", "_").replace(",", "")
            result = replay(data[dynamic] / "bag", out, cfg, force=True, progress=False)
            rows.append(_row(name, result, data[dynamic] if dynamic else None))
    return finish(rows, format_table, args.json)


def _row(name: str, result: Any, dynamic_data: Path | None) -> dict[str, Any]:
    from ..evaluate import evaluate_masks, masked_psnr

    ev = result.evaluation
    row: dict[str, Any] = {
        "run": name,
        "ate_cm": 100 * ev.trajectory.ate_rmse_sim3,
        "ate_online_cm": 100 * float(json.loads((result.out / "eval.json").read_text())["trajectory_online"]["ate_rmse_sim3"]),
        "psnr": ev.deblurred.psnr_mean,
        "psnr_input": ev.input.psnr_mean,
        "psnr_in_mask": None,
        "iou": None,
        "groups_spawned": result.metrics["summary"]["counters"]["groups_spawned"],
    }
    if dynamic_data is not None:
        _, row["psnr_in_mask"] = masked_psnr(dynamic_data / "masks", dynamic_data / "sharp", result.out / "deblurred")
        if (result.out / "masks").is_dir():
            row["iou"] = evaluate_masks(dynamic_data / "masks", result.out / "masks").iou_mean
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the runs ("–" where a run has no mask numbers)."""
    head = ("| run | camera ATE final (cm) | ATE online (cm) | PSNR deblurred (dB) | PSNR input (dB) "
            "| PSNR in object mask (dB) | mask IoU | groups spawned |")
    return table(head, (
        f"| {r['run']} | {r['ate_cm']:.2f} | {r['ate_online_cm']:.2f} | {r['psnr']:.2f} | "
        f"{r['psnr_input']:.2f} | {cell(r['psnr_in_mask'], '.2f', '–')} | {cell(r['iou'], '.3f', '–')} | "
        f"{r['groups_spawned']} |"
        for r in rows
    ))


def run_suite(args: argparse.Namespace) -> int:
    """``--suite``: one row per variant of :data:`SUITE`, against the object-free run."""
    from ..replay import config_from_args, replay
    from ..synth import SynthConfig, generated

    names = select(args.variants, SUITE, "variant")
    cfg = config_from_args(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="posegs-dynamic-suite-") as tmp:
        work = args.work or Path(tmp)
        static_dir = generated(SynthConfig(seed=args.seed, frames=args.frames), work / "no_objects")
        ate_no_objects = _finished_ate(work / "run_no_objects", cfg)
        if ate_no_objects is None:
            print("running the camera path without objects ...", flush=True)
            static = replay(static_dir / "bag", work / "run_no_objects", cfg, force=True, progress=False)
            ate_no_objects = static.evaluation.trajectory.ate_rmse_sim3
        else:
            print("the camera path without objects: reusing the finished run in --work (same configuration)")
        for name in names:
            slug = name.replace(" ", "_")
            seq_dir = generated(SynthConfig(seed=args.seed, frames=args.frames, dynamic=True, **SUITE[name]),
                                work / slug)
            print(f"running '{name}' ...", flush=True)
            result = replay(seq_dir / "bag", work / f"run_{slug}", cfg, force=True, progress=False)
            rows.append(_suite_row(name, result, seq_dir, ate_no_objects))
            print(last_row(rows, format_suite_table), flush=True)
    return finish(rows, format_suite_table, args.json)


def _finished_ate(out: Path, cfg: Any) -> float | None:
    """ATE (m) of a finished replay in ``out`` made with configuration ``cfg``, else None.

    The sequence it replayed was regenerated only if its config changed (:func:`generated`),
    which rewrites the replay's input; a replay older than its sequence is not reused.
    """
    from ...config import config_to_dict

    try:
        metrics = json.loads((out / "metrics.json").read_text())
        ate = json.loads((out / "eval.json").read_text())["trajectory"]["ate_rmse_sim3"]
        fresh = (out / "eval.json").stat().st_mtime >= (Path(metrics["bag"]).parent / "meta.json").stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = metrics.get("config") == json.loads(json.dumps(config_to_dict(cfg)))
    return float(ate) if same and fresh else None


def _suite_row(name: str, result: Any, data: Path, ate_no_objects: float) -> dict[str, Any]:
    from ..evaluate import masked_psnr

    row = _row(name, result, data)
    meta = json.loads((data / "meta.json").read_text())
    summary = result.metrics["summary"]
    _, row["psnr_input_in_mask"] = masked_psnr(data / "masks", data / "sharp", data / "blurred")
    row.update({
        "variant": name,
        "object_area": meta["object_area_mean"],
        "object_blur_px": meta["object_blur_px_mean"],
        "object_frames": meta["object_frames_seen"],
        "frames": len(meta["blur_px"]),
        "ate_no_objects_cm": 100 * ate_no_objects,
        "seconds": replay_seconds(summary),
    })
    row["targets_met"] = suite_targets_met(row)
    return row


def suite_targets_met(row: dict[str, Any]) -> dict[str, bool]:
    """Which of the suite's targets a row meets (a missing number fails its target)."""
    def at_least(value: Any, bound: Any) -> bool:
        return value is not None and bound is not None and value >= bound

    return {
        "ate": row["ate_cm"] <= ATE_RATIO * row["ate_no_objects_cm"],
        "iou": at_least(row["iou"], MIN_IOU),
        "psnr_in_object": at_least(row["psnr_in_mask"], None if row["psnr_input_in_mask"] is None
                                   else row["psnr_input_in_mask"] + MIN_GAIN_DB),
        "psnr": at_least(row["psnr"], row["psnr_input"] + MIN_GAIN_DB),
    }


def format_suite_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of suite rows; a target missed is marked with ``✗``."""
    def mark(row: dict[str, Any], key: str) -> str:
        return "" if row["targets_met"][key] else " ✗"

    head = ("| variant | object area / blur (px) / frames seen | camera ATE final / online (cm) | ATE without objects "
            "(cm) | mask IoU | PSNR in objects: deblurred / input (dB) | PSNR image: deblurred / input (dB) "
            "| groups spawned | s |")
    return table(head, (
        f"| {r['variant']} | {100 * r['object_area']:.0f} % / {r['object_blur_px']:.1f} / {r['object_frames']} of "
        f"{r['frames']} | {r['ate_cm']:.2f}{mark(r, 'ate')} / {r['ate_online_cm']:.2f} | {r['ate_no_objects_cm']:.2f} | "
        f"{cell(r['iou'], '.3f', '–')}{mark(r, 'iou')} | {cell(r['psnr_in_mask'], '.2f', '–')}"
        f"{mark(r, 'psnr_in_object')} / {cell(r['psnr_input_in_mask'], '.2f', '–')} | {r['psnr']:.2f}{mark(r, 'psnr')} / "
        f"{r['psnr_input']:.2f} | {r['groups_spawned']} | {r['seconds']:.0f} |"
        for r in rows
    ))
