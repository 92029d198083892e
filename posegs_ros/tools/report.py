"""The evaluation report: ``eval.json`` plus figures and an ``index.html`` that ties them together.

- ``trajectory.png``: top view of the ground truth and of the Sim(3)-aligned estimate, on the
  plane of the two principal axes of the GT positions (x-y for a z-up map), with start markers.
- ``errors.png``: ATE (after Sim(3) and SE(3) alignment) over time; below it, per-frame PSNR of
  the deblurred and input images when image metrics exist.
- ``strip.png``: thumbnails of a few frames evenly spread over the sequence: input / deblurred /
  ground truth rows, each tile labelled with its PSNR against the ground truth.
- ``index.html``: the numbers (summary and per-frame table) and the figures.

Figures are drawn on matplotlib's Agg canvas without pyplot; every file is written atomically.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "plot_trajectory", "plot_errors", "plot_strip", "render_html"]


def _figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """A figure on matplotlib's Agg canvas (no pyplot: no global backend state, no windows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def _save(fig: Any, path: Path) -> Path:
    from ..io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def _principal_plane(points: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Two axes ``[3, 2]`` for a top view: the world axes of the two largest GT spreads."""
    spread = points.std(axis=0) if len(points) else np.ones(3)
    axes = sorted(np.argsort(spread)[-2:])
    basis = np.zeros((3, 2))
    basis[axes[0], 0] = basis[axes[1], 1] = 1.0
    return basis, ["xyz"[a] for a in axes]


def plot_trajectory(result: Any, path: Path) -> Path:
    """Top view of GT and the Sim(3)-aligned estimate."""
    t = result.trajectory
    basis, labels = _principal_plane(t.gt_positions)
    gt, est = t.gt_positions @ basis, t.est_positions_sim3 @ basis
    fig, axes = _figure(1, 1, (6.0, 5.0))
    ax = axes[0, 0]
    ax.plot(gt[:, 0], gt[:, 1], "-", color="black", lw=2, label="ground truth")
    ax.plot(est[:, 0], est[:, 1], "-", color="tab:blue", lw=1.5, label="estimate (Sim(3)-aligned)")
    for a, b in zip(gt[:: max(1, len(gt) // 25)], est[:: max(1, len(gt) // 25)]):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="tab:red", lw=0.6, alpha=0.6)
    ax.plot(gt[0, 0], gt[0, 1], "o", color="black", label="start")
    ax.plot(est[0, 0], est[0, 1], "o", color="tab:blue")
    ax.set_xlabel(f"{labels[0]} (m)")
    ax.set_ylabel(f"{labels[1]} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(f"top view - ATE RMSE {t.ate_rmse_sim3 * 100:.2f} cm (Sim(3)), scale {t.scale:.3f}")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_errors(result: Any, path: Path) -> Path:
    """ATE over time (and per-frame PSNR when image metrics exist)."""
    has_images = result.deblurred is not None or result.input is not None or result.vs_input is not None
    rows = int(result.trajectory is not None) + int(has_images)
    fig, axes = _figure(rows, 1, (7.5, 2.8 * rows))
    row = 0
    if result.trajectory is not None:
        t = result.trajectory
        ax = axes[row, 0]
        time = t.stamps - t.stamps[0]
        ax.plot(time, t.ate_errors * 100, color="tab:blue", label=f"Sim(3): RMSE {t.ate_rmse_sim3 * 100:.2f} cm")
        ax.plot(time, t.ate_errors_se3 * 100, color="tab:orange", alpha=0.8,
                label=f"SE(3): RMSE {t.ate_rmse_se3 * 100:.2f} cm")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("position error (cm)")
        ax.set_title("absolute trajectory error")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        row += 1
    if has_images:
        ax = axes[row, 0]
        for label, metrics, color in (("deblurred", result.deblurred, "tab:green"),
                                      ("input", result.input, "tab:gray"),
                                      ("render vs input", None if result.deblurred else result.vs_input, "tab:purple")):
            if metrics is None:
                continue
            values = [min(v, 100.0) for v in metrics.psnr]
            ax.plot(range(len(values)), values, ".-", color=color, label=f"{label}: mean {metrics.psnr_mean:.2f} dB")
        ax.set_xlabel("frame (matched images, sorted by name)")
        ax.set_ylabel("PSNR vs GT (dB)" if result.deblurred or result.input else "PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _strip_names(result: Any, count: int) -> list[str]:
    metrics = result.deblurred or result.input or result.vs_input
    if metrics is None:
        return []
    names = metrics.names
    picks = np.unique(np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int))
    return [names[i] for i in picks]


def plot_strip(result: Any, path: Path, count: int = 5) -> Path | None:
    """Thumbnails (input / deblurred / GT rows) of ``count`` frames spread over the sequence."""
    from .evaluate import _read_rgb

    names = _strip_names(result, count)
    paths = result.paths
    rows = [(label, folder, metrics) for label, folder, metrics in (
        ("input", paths.get("input_images"), result.input),
        ("deblurred", paths.get("est_images"), result.deblurred or result.vs_input),
        ("ground truth", paths.get("gt_images"), None),
    ) if folder]
    if not names or len(rows) < 2:
        return None
    fig, axes = _figure(len(rows), len(names), (2.4 * len(names), 2.0 * len(rows)))
    for r, (label, folder, metrics) in enumerate(rows):
        scores = metrics.per_frame() if metrics is not None else {}
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(_read_rgb(Path(folder) / name))
            ax.set_xticks([])
            ax.set_yticks([])
            if name in scores:
                value = scores[name]["psnr"]
                ax.set_title(f"{name}: {'inf' if math.isinf(value) else f'{value:.1f}'} dB", fontsize=8)
            elif r == len(rows) - 1:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(result: Any, figures: list[str]) -> str:
    """``index.html``: summary tables, figures, per-frame table."""
    rows: list[tuple[str, str]] = []
    t = result.trajectory
    if t is not None:
        rows += [
            ("poses matched", f"{t.matched} (GT {t.gt_poses}, estimate {t.est_poses}, tolerance {t.max_diff} s)"),
            ("ATE RMSE, Sim(3) aligned", f"{_fmt(t.ate_rmse_sim3 * 100, 2)} cm"),
            ("ATE RMSE, SE(3) aligned", f"{_fmt(t.ate_rmse_se3 * 100, 2)} cm"),
            ("ATE RMSE, not aligned", f"{_fmt(t.ate_rmse_unaligned * 100, 2)} cm"),
            ("Sim(3) scale", _fmt(t.scale, 4)),
            ("RPE translation (1 frame)", f"{_fmt(t.rpe_trans_rmse * 100, 2)} cm"),
            ("RPE rotation (1 frame)", f"{_fmt(t.rpe_rot_rmse_deg, 3)} deg"),
            (f"RPE translation / rotation ({t.rpe_1s_frames} frames, ~1 s)",
             f"{_fmt(t.rpe_1s_trans_rmse * 100, 2)} cm / {_fmt(t.rpe_1s_rot_rmse_deg, 2)} deg"),
            ("rotation gain x / y / z (~1 s, estimate over GT; 1 = right size)",
             " / ".join(_fmt(g, 3) for g in t.rotation_gain_1s)),
        ]
    for label, metrics in (("deblurred vs GT", result.deblurred), ("input vs GT", result.input),
                           ("render vs input", result.vs_input)):
        if metrics is not None:
            rows.append((f"{label}: PSNR / SSIM",
                         f"{_fmt(metrics.psnr_mean, 2)} dB / {_fmt(metrics.ssim_mean, 4)} ({len(metrics.names)} "
                         f"images, {metrics.identical} identical)"))
    if result.masks is not None:
        rows.append(("mask IoU", _fmt(result.masks.iou_mean, 4)))
        rows.append(("PSNR inside GT mask", f"{_fmt(result.masks.psnr_in_mask_mean, 2)} dB"))
    summary = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    images = "\n".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"></figure>' for f in figures)
    per_frame = result.to_dict().get("per_frame", {})
    columns = sorted({k for values in per_frame.values() for k in values})
    table = ""
    if per_frame:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["image"] + columns)
        body = "\n".join(
            "<tr><td>" + html.escape(name) + "</td>"
            + "".join(f"<td>{_fmt(values.get(c))}</td>" for c in columns) + "</tr>"
            for name, values in per_frame.items()
        )
        table = f"<h2>Per frame</h2>\n<table class='frames'><tr>{head}</tr>\n{body}\n</table>"
    inputs = "".join(f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>"
                     for k, v in result.paths.items() if v)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>posegs evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
table.frames td {{ text-align: right; font-family: monospace; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
</style></head><body>
<h1>posegs evaluation</h1>
<table>
{summary}
</table>
{images}
{table}
<h2>Inputs</h2><ul>{inputs}</ul>
<p>PSNR of identical images is infinite; means cap each frame at 100 dB. ATE/RPE computed with evo.</p>
</body></html>
"""


def write_report(result: Any, out_dir: str | Path, strip_frames: int = 5) -> Path:
    """Write eval.json, the figures the result allows, and index.html into ``out_dir``; returns index.html."""
    from ..io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", result.to_dict())
    figures: list[str] = []
    if result.trajectory is not None:
        figures.append(plot_trajectory(result, out / "trajectory.png").name)
    if result.trajectory is not None or result.deblurred is not None or result.input is not None \
            or result.vs_input is not None:
        figures.append(plot_errors(result, out / "errors.png").name)
    strip = plot_strip(result, out / "strip.png", strip_frames)
    if strip is not None:
        figures.append(strip.name)
    return atomic_write_text(out / "index.html", render_html(result, figures))
