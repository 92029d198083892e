"""``posegs bench real DIR``: real camera frames, window by window.

``DIR`` is a TUM RGB-D or 7-Scenes sequence folder (what ``posegs bag-from-frames`` reads; the
data stays outside the repository). Each window ``START:COUNT`` (images ``START`` ..
``START + COUNT - 1`` of the folder) is converted into a rosbag2 (resized, intrinsics scaled)
and replayed with ``posegs replay`` in its own process, so that its peak RSS is its own. Per
window it prints ATE (Sim(3)) of the final and of the online trajectory, RPE per frame and over
~1 s (rotation drift), the PSNR / SSIM of the renders against the input frames (real cameras
have no sharp ground truth), frames posed, processing frames/s, end-to-end seconds per frame
(final refinement and renders included) and the peak RSS.

    posegs bench real data/redkitchen --windows 300:150,450:150,600:150 --json real.json
    posegs bench real data/redkitchen --windows 300:100,300:300,300:700   # cost vs length
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._markdown import cell, finish, last_row, table

__all__ = ["parse_windows", "window_row", "format_table", "add_arguments", "run"]


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"300:150,450:150"`` -> ``[(300, 150), (450, 150)]`` (start >= 0, count >= 2)."""
    windows = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            start, count = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"--windows expects START:COUNT[,START:COUNT...], got {part!r}") from None
        if start < 0 or count < 2:
            raise ValueError(f"window {part!r}: START must be >= 0 and COUNT >= 2")
        windows.append((start, count))
    if not windows:
        raise ValueError("--windows: no window given")
    return windows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bag_from_frames import parse_size
    from ..replay import add_config_arguments

    parser.add_argument("source", type=Path, metavar="DIR", help="TUM RGB-D or 7-Scenes sequence folder")
    parser.add_argument("--windows", default="0:150", metavar="START:COUNT,...",
                        help="image windows of the folder to replay, each on its own (default 0:150)")
    parser.add_argument("--resize", type=parse_size, default=(320, 240), metavar="WxH",
                        help="image size the engine sees (default 320x240)")
    parser.add_argument("--camera", default=None, help="calibration, as for posegs bag-from-frames")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep bags and replay outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    add_config_arguments(parser, " for every window")


def _replay_command(bag: Path, out: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-c", "import sys; from posegs_ros.tools.cli import main; sys.exit(main())",
               "replay", str(bag), "--out", str(out), "--force", "--quiet"]
    if args.preset:
        command += ["--preset", args.preset]
    for path in args.config:
        command += ["--config", str(path)]
    for item in args.overrides:
        command += ["--set", item]
    return command


def _run_child(command: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run ``command`` (output to ``log_path``); returns (exit code, wall seconds, peak RSS MB)."""
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def window_row(start: int, count: int, out: Path, wall_s: float, peak_rss_mb: float) -> dict[str, Any]:
    """One table row from a replay output folder (``metrics.json``, ``eval.json``)."""
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    ev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}

    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) else float("nan")

    traj, online = ev.get("trajectory", {}), ev.get("trajectory_online", {})
    vs_input = ev.get("vs_input", {})
    frames = int(summary["frames_processed"])
    return {
        "window": f"{start}:{count}",
        "frames": frames,
        "posed": int(summary["frames_with_pose"]),
        "ate_cm": 100 * number(traj.get("ate_rmse_sim3")),
        "ate_online_cm": 100 * number(online.get("ate_rmse_sim3")),
        "rpe_cm": 100 * number(traj.get("rpe_trans_rmse")),
        "rpe_deg": number(traj.get("rpe_rot_rmse_deg")),
        "rpe_1s_cm": 100 * number(traj.get("rpe_1s_trans_rmse")),
        "rpe_1s_deg": number(traj.get("rpe_1s_rot_rmse_deg")),
        # estimated over GT rotation about the camera's x / y / z over ~1 s (posegs eval): a focal off shows on x, y
        "rotation_gain": [number(g) for g in traj.get("rotation_gain_1s") or [None] * 3],
        "psnr_vs_input": number(vs_input.get("psnr_mean")),
        "ssim_vs_input": number(vs_input.get("ssim_mean")),
        "keyframes": int(summary["keyframes"]),
        "gaussians": int(summary["gaussians"]),
        "mismatch": int(summary["counters"].get("mismatch_frames", 0)),
        "lost": int(summary["counters"].get("lost_frames", 0)),
        "reinitializations": int(summary["counters"].get("reinitializations", 0)),
        "fps": float(summary["fps"]),
        "seconds_per_frame": wall_s / max(frames, 1),
        "wall_s": wall_s,
        "peak_rss_mb": peak_rss_mb,
        # the focal length the map used (x), against the camera's: self-calibration (calibration.focal)
        "focal_px": number((summary.get("calibration") or {}).get("fx")),
        "focal_given_px": number((summary.get("calibration") or {}).get("given_fx")),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`window_row` rows."""
    head = ("| window | posed | ATE final / online (cm) | RPE (cm, deg / frame) | RPE over 1 s (cm, deg) | "
            "PSNR / SSIM vs input | "
            "keyframes | Gaussians | map mismatch / lost / re-inits | focal used / given (px) | rotation gain x / y / z | "
            "frames/s | "
            "s / frame end to end | peak RSS (MB) |")
    return table(head, (
        f"| {r['window']} | {r['posed']} / {r['frames']} | {cell(r['ate_cm'], '.2f')} / "
        f"{cell(r['ate_online_cm'], '.2f')} | {cell(r['rpe_cm'], '.2f')}, {cell(r['rpe_deg'], '.3f')} | "
        f"{cell(r.get('rpe_1s_cm', float('nan')), '.2f')}, {cell(r.get('rpe_1s_deg', float('nan')), '.2f')} | "
        f"{cell(r['psnr_vs_input'], '.2f')} / {cell(r['ssim_vs_input'], '.3f')} | {r['keyframes']} | "
        f"{r['gaussians']} | {r['mismatch']} / {r['lost']} / {r['reinitializations']} | "
        f"{cell(r.get('focal_px', float('nan')), '.1f')} / {cell(r.get('focal_given_px', float('nan')), '.1f')} | "
        f"{' / '.join(cell(g, '.2f') for g in r.get('rotation_gain', [float('nan')] * 3))} | {r['fps']:.2f} | "
        f"{r['seconds_per_frame']:.2f} | {r['peak_rss_mb']:.0f} |"
        for r in rows
    ))


def run(args: argparse.Namespace) -> int:
    from ...config import ConfigError
    from ..bag_from_frames import convert
    from ..replay import config_from_args

    try:
        windows = parse_windows(args.windows)
        config_from_args(args)  # refuse a bad --set / --config before converting anything
    except (ValueError, ConfigError) as err:
        print(f"posegs bench real: {err}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="posegs-real-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for start, count in windows:
            name = f"w{start}_{count}"
            seq = work / name
            if not (seq / "meta.json").exists():
                try:
                    convert(args.source, seq, camera=args.camera, resize=args.resize, first_frame=start,
                            max_frames=count, force=True)
                except (ValueError, FileNotFoundError) as err:
                    print(f"posegs bench real: window {start}:{count}: {err}", file=sys.stderr)
                    return 2
            out = work / f"run_{name}"
            print(f"window {start}:{count}: replaying ...", flush=True)
            code, wall, rss = _run_child(_replay_command(seq / "bag", out, args), work / f"{name}.log")
            if code != 0:
                print(f"posegs bench real: replay of window {start}:{count} failed (exit {code}); "
                      f"see {work / f'{name}.log'}", file=sys.stderr)
                return 1
            rows.append(window_row(start, count, out, wall, rss))
            print(last_row(rows, format_table), flush=True)
        return finish(rows, format_table, args.json)
