"""``posegs bench realtime``: does the node keep up with a live camera?

Synthesizes ``posegs synth`` sequences (default 300 frames = 10 s at 30 Hz, 320x240) and plays
each with ``posegs replay --realtime`` (the node's worker, concurrent tracking and mapping, a
drop-oldest input queue, frames fed on a wall clock) at every ``--rates`` value.  One row per
sequence and rate:

- share of the images that got a pose on TF (frames dropped by the queue or lost get none);
- tracking latency median / p95 (image taken -> pose known) and receipt -> TF latency;
- online ATE (Sim(3)) of the poses as published;
- PSNR of the ``~/deblurred`` renders as published (rendered from the map of that moment)
  against the sharp ground truth, and the input's PSNR on the same frames;
- mapping steps taken, CPU cores busy, and the share of the machine's CPU time the
  hypervisor gave to other virtual machines meanwhile (steal: on a shared host the numbers
  above are only comparable at similar steal).

``--busy`` runs one other CPU-bound process during the replays (a robot runs other nodes).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

from ._markdown import table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..replay import add_config_arguments

    parser.add_argument("--frames", type=int, default=300, help="frames per sequence (default 300: 10 s at 30 Hz)")
    parser.add_argument("--seeds", default="0", help="comma-separated synth seeds (default 0)")
    parser.add_argument("--rates", default="1.0,0.5", help="comma-separated playback rates (default 1.0,0.5)")
    parser.add_argument("--busy", action="store_true", help="run one other CPU-bound process meanwhile")
    parser.add_argument("--no-render", action="store_true", help="no ~/deblurred renders (no PSNR)")
    add_config_arguments(parser, " for every run")
    parser.add_argument("--work", type=Path, default=None, help="keep sequences and outputs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")


def _spin(stop: Any) -> None:  # pragma: no cover - runs in a child process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def run(args: argparse.Namespace) -> int:
    from ..replay import config_from_args
    from ..realtime import replay_realtime
    from ..synth import SynthConfig, generate, write

    cfg = config_from_args(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    rows: list[dict[str, Any]] = []
    busy = None
    with tempfile.TemporaryDirectory(prefix="posegs-realtime-") as tmp:
        work = args.work or Path(tmp)
        if args.busy:
            stop = multiprocessing.Event()
            busy = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
            busy.start()
        try:
            for seed in seeds:
                seq_dir = work / f"seq{seed}_{args.frames}"
                if not (seq_dir / "meta.json").exists():
                    seq = generate(SynthConfig(seed=seed, frames=args.frames))
                    write(seq, seq_dir, force=True)
                    print(f"sequence seed {seed}: {args.frames} frames, mean blur {seq.blur_px.mean():.2f} px", flush=True)
                for rate in rates:
                    out = work / f"run_seed{seed}_rate{rate}"
                    result = replay_realtime(seq_dir / "bag", out, cfg, rate=rate, force=True, render=not args.no_render)
                    rows.append(_row(seed, rate, result, out))
                    print(_line(rows[-1]), flush=True)
        finally:
            if busy is not None:
                stop.set()
                busy.join(5)
    print()
    print(markdown_table(rows, busy=args.busy))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _row(seed: int, rate: float, result: Any, out: Path) -> dict[str, Any]:
    live = result.metrics["realtime"]
    row: dict[str, Any] = {
        "seed": seed, "rate": rate, "images": live["images"], "posed": live["frames_posed"],
        "posed_share": live["posed_share"], "dropped": live["frames_dropped"],
        "latency_median_ms": live["tracking_latency_ms"]["median"], "latency_p95_ms": live["tracking_latency_ms"]["p95"],
        "receipt_to_tf_median_ms": live["receipt_to_tf_ms"]["median"], "renders": live["renders"],
        "mapping_rounds": live["mapping_rounds"], "mapping_steps": live["mapping_steps"], "keyframes": live["keyframes"], "gaussians": live["gaussians"],
        "cpu_cores": live["cpu_cores_used"], "cpu_steal": live.get("cpu_steal_share"),
        "tracking_scale": live.get("tracking_scale", 1.0), "passes_cut": live.get("passes_cut", 0),
        "ate_online_cm": math.nan, "psnr_deblurred": math.nan, "psnr_input": math.nan,
    }
    ev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    online = ev.get("trajectory_online")
    if online:
        row["ate_online_cm"] = 100.0 * online["ate_rmse_sim3"]
    if result.evaluation is not None and result.evaluation.deblurred is not None and result.evaluation.input is not None:
        from ..evaluate import mean_psnr

        rendered = set(result.evaluation.deblurred.names)
        inputs = result.evaluation.input
        row["psnr_deblurred"] = result.evaluation.deblurred.psnr_mean
        row["psnr_input"] = mean_psnr([p for n, p in zip(inputs.names, inputs.psnr) if n in rendered])
    return row


def _line(row: dict[str, Any]) -> str:
    return (f"seed {row['seed']} rate {row['rate']}: posed {row['posed']}/{row['images']} "
            f"({100 * row['posed_share']:.1f} %), latency median {row['latency_median_ms']:.1f} ms "
            f"p95 {row['latency_p95_ms']:.1f} ms, online ATE {row['ate_online_cm']:.2f} cm, PSNR deblurred "
            f"{row['psnr_deblurred']:.2f} dB vs input {row['psnr_input']:.2f} dB, {row['renders']} renders, "
            f"{row['mapping_steps']} mapping steps, tracking at {100 * row['tracking_scale']:.0f} % size, "
            f"{row['passes_cut']} extra passes cut, {row['cpu_cores']:.2f} cores" + (f", {100 * row['cpu_steal']:.0f} % CPU stolen by the hypervisor"
                                                       if row.get("cpu_steal") is not None else ""))


def markdown_table(rows: list[dict[str, Any]], busy: bool = False) -> str:
    """The README table of ``rows``."""
    head = ("| seed | rate | frames posed | tracking latency median / p95 (ms) | online ATE (cm) | "
            "PSNR online deblurred / input (dB) | renders | mapping steps | tracking size | CPU cores busy | CPU stolen |")
    return table(head, (
        f"| {r['seed']} | {r['rate']:g}{' (+ busy process)' if busy else ''} | {r['posed']} / {r['images']} "
        f"({100 * r['posed_share']:.1f} %) | {r['latency_median_ms']:.1f} / {r['latency_p95_ms']:.1f} | "
        f"{r['ate_online_cm']:.2f} | {r['psnr_deblurred']:.2f} / {r['psnr_input']:.2f} | {r['renders']} | "
        f"{r['mapping_steps']} | {100 * r['tracking_scale']:.0f} % | {r['cpu_cores']:.2f} | "
        + (f"{100 * r['cpu_steal']:.0f} % |" if r.get("cpu_steal") is not None else "- |")
        for r in rows
    ))
