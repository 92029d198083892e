"""``posegs bench quality``: the ablation table, from one command.

Synthesizes the default sequence (320x240, 60 frames, 3-8 px blur) and a sharp twin (same
scene and path, zero exposure), replays them through the engine exactly as ``posegs replay``
does, evaluates against ground truth and prints one Markdown table:

- ``full``: the method (blur model on, poses refined in mapping: UPGS's joint optimization);
- ``blur off``: one sharp render per frame (no exposure model);
- ``two-step``: poses from tracking are frozen, mapping optimizes Gaussians only;
- ``full on sharp input``: the method on the sequence without motion blur.

``--suite`` instead runs the default configuration on several sequences (:data:`SUITE`:
default, fine texture, stronger blur, another seed) and on each one's sharp-camera twin (same
scene and path, exposure 0), and prints one row per sequence: deblurred and input PSNR / SSIM
against the sharp ground truth, the twin's render PSNR (the ceiling: what the map can show at
all), ATE final / online, Gaussians and time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ._markdown import cell, finish, last_row, replay_seconds, select, table

VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    # name -> (config overrides, use the sharp twin sequence)
    "full": ({}, False),
    "blur off": ({"blur.enabled": False}, False),
    "two-step": ({"mapping.optimize_poses": False}, False),
    "full on sharp input": ({}, True),
}


# name -> posegs synth settings (SynthConfig fields) of the suite's sequences
SUITE: dict[str, dict[str, Any]] = {
    "default": {},
    "fine texture": {"texture_detail": "fine"},
    "stronger blur": {"exposure": 1.0 / 30.0, "shake": 1.8},
    "seed 1": {"seed": 1},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..replay import add_config_arguments

    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--suite", action="store_true",
                        help=f"the default configuration on the suite's sequences ({', '.join(SUITE)}) and their "
                        "sharp-camera twins instead of the variants")
    parser.add_argument("--sequences", default=",".join(SUITE), help="with --suite: comma-separated subset")
    parser.add_argument("--no-ceiling", action="store_true", help="with --suite: skip the sharp twins (no ceiling column)")
    add_config_arguments(parser, " for every variant")
    parser.add_argument("--work", type=Path, default=None, help="keep sequences and outputs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return run_suite(args)
    from ..replay import config_from_args, replay
    from ..synth import SynthConfig, generate, write

    names = select(args.variants, VARIANTS, "variant")
    with tempfile.TemporaryDirectory(prefix="posegs-quality-") as tmp:
        work = args.work or Path(tmp)
        bags: dict[bool, Path] = {}
        for sharp in sorted({VARIANTS[n][1] for n in names}):
            cfg = SynthConfig(seed=args.seed, frames=args.frames, exposure=0.0 if sharp else SynthConfig.exposure)
            seq = generate(cfg)
            bags[sharp] = write(seq, work / ("sharp" if sharp else "blurred"), force=True) / "bag"
            print(f"sequence {'sharp' if sharp else 'blurred'}: mean blur {seq.blur_px.mean():.2f} px", flush=True)
        rows = []
        for name in names:
            overrides, sharp = VARIANTS[name]
            cfg = config_from_args(args, overrides)
            print(f"running '{name}' ...", flush=True)
            result = replay(bags[sharp], work / name.replace(" ", "_").replace(",", ""), cfg, force=True, progress=False)
            rows.append(_row(name, result))
    return finish(rows, format_table, args.json)


def _row(name: str, result: Any) -> dict[str, Any]:
    ev = result.evaluation
    summary = result.metrics["summary"]
    eval_json = json.loads((result.out / "eval.json").read_text())
    return {
        "variant": name,
        "ate_cm": 100 * ev.trajectory.ate_rmse_sim3,
        "ate_online_cm": 100 * float(eval_json["trajectory_online"]["ate_rmse_sim3"]),
        "psnr_deblurred": ev.deblurred.psnr_mean,
        "psnr_input": ev.input.psnr_mean,
        "ssim_deblurred": ev.deblurred.ssim_mean,
        "fps": summary["fps"],
        "final_refinement_s": summary["final_refinement_seconds"],
        "keyframes": summary["keyframes"],
        "gaussians": summary["gaussians"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ablation rows."""
    head = ("| variant | ATE final (cm) | ATE online (cm) | PSNR deblurred (dB) | PSNR input (dB) | gain (dB) "
            "| SSIM deblurred | online fps | final refinement (s) |")
    return table(head, (
        f"| {r['variant']} | {r['ate_cm']:.2f} | {r['ate_online_cm']:.2f} | {r['psnr_deblurred']:.2f} | "
        f"{r['psnr_input']:.2f} | {r['psnr_deblurred'] - r['psnr_input']:+.2f} | {r['ssim_deblurred']:.3f} | "
        f"{r['fps']:.2f} | {r['final_refinement_s']:.0f} |"
        for r in rows
    ))


def run_suite(args: argparse.Namespace) -> int:
    """``--suite``: one row per sequence of :data:`SUITE` (and its sharp twin)."""
    import dataclasses

    from ..replay import config_from_args, replay
    from ..synth import SynthConfig, generated

    names = select(args.sequences, SUITE, "sequence")
    cfg = config_from_args(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="posegs-suite-") as tmp:
        work = args.work or Path(tmp)
        for name in names:
            synth = SynthConfig(**{"seed": args.seed, "frames": args.frames, **SUITE[name]})
            slug = name.replace(" ", "_")
            runs = {}
            for twin in (False,) if args.no_ceiling else (False, True):
                seq_dir = generated(dataclasses.replace(synth, exposure=0.0) if twin else synth,
                                    work / f"{slug}{'_sharp' if twin else ''}")
                print(f"running '{name}'{' (sharp twin)' if twin else ''} ...", flush=True)
                runs[twin] = replay(seq_dir / "bag", work / f"run_{slug}{'_sharp' if twin else ''}", cfg, force=True,
                                    progress=False)
            blur = json.loads((work / slug / "meta.json").read_text()).get("blur_px_mean", float("nan"))
            rows.append(_suite_row(name, runs[False], runs.get(True), blur_px=blur))
            print(last_row(rows, format_suite_table), flush=True)
    return finish(rows, format_suite_table, args.json)


def _suite_row(name: str, blurred: Any, sharp: Any | None, blur_px: float) -> dict[str, Any]:
    row = _row(name, blurred)
    ev = blurred.evaluation
    summary = blurred.metrics["summary"]
    row.update({
        "sequence": name,
        "blur_px": blur_px,
        "ssim_input": ev.input.ssim_mean,
        "psnr_ceiling": sharp.evaluation.deblurred.psnr_mean if sharp is not None else float("nan"),
        "ssim_ceiling": sharp.evaluation.deblurred.ssim_mean if sharp is not None else float("nan"),
        "ate_sharp_cm": 100 * sharp.evaluation.trajectory.ate_rmse_sim3 if sharp is not None else float("nan"),
        "seconds": replay_seconds(summary),
        "seconds_per_frame": replay_seconds(summary) / max(summary["frames_processed"], 1),
    })
    return row


def format_suite_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of suite rows ("-" for the ceiling columns of a run without sharp twin)."""
    head = ("| sequence | blur (px) | PSNR deblurred / input / ceiling (dB) | gain | to ceiling | SSIM deblurred / "
            "input / ceiling | ATE final / online (cm) | Gaussians | s / frame |")
    return table(head, (
        f"| {r['sequence']} | {r['blur_px']:.1f} | {r['psnr_deblurred']:.2f} / {r['psnr_input']:.2f} / "
        f"{cell(r['psnr_ceiling'], '.2f')} | {r['psnr_deblurred'] - r['psnr_input']:+.2f} | "
        f"{cell(r['psnr_deblurred'] - r['psnr_ceiling'], '+.2f')} | {r['ssim_deblurred']:.3f} / "
        f"{r['ssim_input']:.3f} / {cell(r['ssim_ceiling'], '.3f')} | {r['ate_cm']:.2f} / {r['ate_online_cm']:.2f} | "
        f"{r['gaussians']} | {r['seconds_per_frame']:.2f} |"
        for r in rows
    ))
