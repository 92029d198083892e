"""``posegs bench dynamic``: moving objects with motion groups on vs off.

Synthesizes the default sequence with a moving textured box (``posegs synth --dynamic``) and
the static default sequence, replays them with ``dynamic.enabled`` on and off, and prints one
Markdown table: camera ATE (Sim(3)), deblurred PSNR over the whole image and inside the moving
object's ground-truth mask, and the IoU of the detected moving-object mask with the ground truth.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ._markdown import cell, table

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
    add_config_arguments(parser, " for every run")
    parser.add_argument("--work", type=Path, default=None, help="keep sequences and outputs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
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
    print()
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


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
