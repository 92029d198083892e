"""``posegs bench render``: the CPU rasterizer against its PyTorch reference, ms and peak RSS.

Each (implementation, scene) pair runs in its own subprocess so that its peak RSS is its
own. Scenes follow ANCHORS.md's standard: N random Gaussians in a frustum 1-5 m ahead,
scales 1-3 cm, opacity 0.5, loss = mean |render - target|.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

# name -> (description, Gaussians, width, height, focal, cameras, render mode)
SCENES: dict[str, tuple[str, int, int, int, float, int, str]] = {
    "a": ("20k @ 320x240, f=250", 20_000, 320, 240, 250.0, 1, "RGB"),
    "b": ("100k @ 640x480, f=500", 100_000, 640, 480, 500.0, 1, "RGB"),
    "blur": ("30k @ 320x240, C=5 sub-exposure cameras (mean of renders)", 30_000, 320, 240, 250.0, 5, "RGB"),
    "ed": ("20k @ 320x240, render_mode RGB+ED", 20_000, 320, 240, 250.0, 1, "RGB+ED"),
}
IMPLEMENTATIONS = ("cpu", "reference")


@dataclass
class Result:
    scene: str
    impl: str
    threads: int
    repeats: int
    first_call_ms: float  # includes numba compilation (or loading it from the cache)
    forward_ms: float
    forward_backward_ms: float
    peak_rss_mb: float
    n_isects: int | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenes", default="a,b,blur,ed", help=f"comma-separated scenes out of {','.join(SCENES)} (default: all)"
    )
    parser.add_argument("--impls", default="cpu,reference", help="comma-separated: cpu, reference (default: both)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats for the CPU path (median; default 10)")
    parser.add_argument(
        "--ref-repeats", type=int, default=3, help="timed repeats for the slow reference (median; default 3)"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and the renderer (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "SCENE"), help=argparse.SUPPRESS)


def make_scene(name: str, seed: int = 0) -> dict[str, Any]:
    """The benchmark scene ``name`` as keyword arguments of ``rasterize`` (plus a target)."""
    import torch

    from posegs_ros.geometry import se3_exp

    _, n, width, height, focal, n_cams, mode = SCENES[name]
    g = torch.Generator().manual_seed(seed)
    z = 1.0 + 4.0 * torch.rand(n, generator=g)
    x = (torch.rand(n, generator=g) - 0.5) * (width / focal) * z
    y = (torch.rand(n, generator=g) - 0.5) * (height / focal) * z
    twists = torch.zeros(n_cams, 6, dtype=torch.float64)
    if n_cams > 1:  # sub-exposure poses along a short motion: T(s) = exp(s d), s in [-1/2, 1/2]
        d = torch.tensor([0.02, 0.005, 0.0, 0.0, 0.01, 0.002], dtype=torch.float64)
        twists = torch.linspace(-0.5, 0.5, n_cams, dtype=torch.float64)[:, None] * d
    ks = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    channels = 4 if mode == "RGB+ED" else 3
    return dict(
        means=torch.stack([x, y, z], dim=-1),
        quats=torch.randn(n, 4, generator=g),
        scales=0.01 + 0.02 * torch.rand(n, 3, generator=g),
        opacities=torch.full((n,), 0.5),
        colors=torch.rand(n, 3, generator=g),
        viewmats=torch.linalg.inv(se3_exp(twists)).float(),
        Ks=ks.expand(n_cams, 3, 3).contiguous(),
        width=width,
        height=height,
        render_mode=mode,
        target=torch.rand(height, width, channels, generator=g),
    )


def _worker(impl: str, scene_name: str, repeats: int, threads: int) -> Result:
    import resource
    import statistics
    import time

    import torch

    from posegs_ros.render import rasterize

    torch.set_num_threads(threads)
    scene = make_scene(scene_name)
    target = scene.pop("target")
    leaves = ("means", "quats", "scales", "opacities", "colors", "viewmats")

    def forward() -> tuple[Any, Any, dict[str, Any]]:
        return rasterize(**scene, backend=impl)

    def forward_backward() -> dict[str, Any]:
        for key in leaves:
            scene[key] = scene[key].detach().requires_grad_(True)
        colors, _, meta = forward()
        loss = (colors.mean(dim=0) - target).abs().mean()  # blur model: mean over sub-exposures
        loss.backward()
        return meta

    start = time.perf_counter()
    meta = forward_backward()
    first = time.perf_counter() - start
    forward_backward()  # warm caches
    fwd, fwd_bwd = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            forward()
        fwd.append(time.perf_counter() - start)
        start = time.perf_counter()
        forward_backward()
        fwd_bwd.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_isects = meta.get("n_isects", len(meta["flatten_ids"]) if "flatten_ids" in meta else None)
    return Result(
        scene=scene_name,
        impl=impl,
        threads=torch.get_num_threads(),
        repeats=repeats,
        first_call_ms=1e3 * first,
        forward_ms=1e3 * statistics.median(fwd),
        forward_backward_ms=1e3 * statistics.median(fwd_bwd),
        peak_rss_mb=peak_kb / 1024.0,
        n_isects=int(n_isects) if n_isects is not None else None,
    )


def _spawn(impl: str, scene: str, repeats: int, threads: int) -> Result | str:
    """Run one measurement in a fresh interpreter; a Result, or the error text."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "posegs_ros.tools.bench_render", "--worker", impl, scene,
           "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return Result(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _table(results: list[Result], failures: list[str], threads: int) -> str:
    lines = [
        f"posegs bench render: {threads} thread(s) for torch and the renderer, times are medians",
        "",
        f"{'scene':<6} {'impl':<10} {'reps':>4} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak RSS MB':>12} "
        f"{'first call ms':>14} {'isects':>9}",
    ]
    for r in results:
        isects = "" if r.n_isects is None else str(r.n_isects)
        lines.append(
            f"{r.scene:<6} {r.impl:<10} {r.repeats:>4} {r.forward_ms:>9.1f} {r.forward_backward_ms:>11.1f} "
            f"{r.peak_rss_mb:>12.0f} {r.first_call_ms:>14.0f} {isects:>9}"
        )
    by_key = {(r.scene, r.impl): r for r in results}
    ratios = []
    for name in dict.fromkeys(r.scene for r in results):
        cpu, ref = by_key.get((name, "cpu")), by_key.get((name, "reference"))
        if cpu and ref:
            ratios.append(
                f"  {name:<5} reference / cpu: forward {ref.forward_ms / cpu.forward_ms:5.1f}x, "
                f"forward+backward {ref.forward_backward_ms / cpu.forward_backward_ms:5.1f}x"
            )
    if ratios:
        lines += ["", "speed ratio (same run):"] + ratios
    lines += ["", "scenes:"] + [f"  {k:<5} {SCENES[k][0]}" for k in dict.fromkeys(r.scene for r in results)]
    lines += [f"FAILED {f}" for f in failures]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.worker:
        impl, scene = args.worker
        print(json.dumps(asdict(_worker(impl, scene, args.repeats, args.threads))))
        return 0
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = [s for s in scenes if s not in SCENES] + [i for i in impls if i not in IMPLEMENTATIONS]
    if unknown:
        print(f"unknown scene or implementation: {', '.join(unknown)}", file=sys.stderr)
        return 2
    results: list[Result] = []
    failures: list[str] = []
    for scene in scenes:
        for impl in impls:
            repeats = args.repeats if impl == "cpu" else args.ref_repeats
            if not args.json:
                print(f"measuring {impl} on scene {scene} ({SCENES[scene][0]}) ...", file=sys.stderr, flush=True)
            outcome = _spawn(impl, scene, repeats, args.threads)
            if isinstance(outcome, Result):
                results.append(outcome)
            else:
                failures.append(f"{impl} on {scene}: {outcome}")
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "failures": failures}, indent=2))
    else:
        print(_table(results, failures, args.threads))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="posegs bench render", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
