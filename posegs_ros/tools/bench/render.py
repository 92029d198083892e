"""``posegs bench render``: the CPU rasterizer against its PyTorch reference, ms and peak RSS.

Each (implementation, scene) pair runs in its own subprocess so that its peak RSS is its
own. Scenes are those the other CPU renderers were measured on: N random Gaussians in a
frustum 1-5 m ahead, scales 1-3 cm, opacity 0.5, loss = mean |render - target| (mean over
the cameras first: the blur model). The ``engine`` scenes are the reconstruction engine's call: C = 5
sub-exposure cameras, degree-0 SH colours, backgrounds, render mode RGB+ED, with gradients
to everything (mapping) or to the viewmats only (``engine-pose``: tracking).

The CPU rows also list per-phase wall times (medians over the forward+backward runs) and
the table header gives the 1-minute load average before and after the run: wall-clock
times on a busy machine are noisy, compare runs at similar load. The measured processes run
with ``OMP_WAIT_POLICY=PASSIVE`` unless told otherwise: with GNU OpenMP's default, PyTorch's
idle threads spin after every parallel op, and on a busy machine (where a session may get
only one CPU's worth of time) they take it from whatever runs next, including the loss.
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
    "engine": (
        "30k @ 320x240, C=5, RGB+ED, SH0, backgrounds, grads to all (mapping)", 30_000, 320, 240, 250.0, 5, "RGB+ED"
    ),
    "engine-pose": (
        "the engine scene, grads to the viewmats only (tracking)", 30_000, 320, 240, 250.0, 5, "RGB+ED"
    ),
}
# scenes rendered like the reconstruction engine: SH0 colours [N, 1, 3] and backgrounds
ENGINE_SCENES = ("engine", "engine-pose")
# scenes whose Gaussians are fixed (only the viewmats get gradients)
POSE_ONLY_SCENES = ("engine-pose",)
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
    phases_ms: dict[str, float] | None = None  # CPU renderer phases, medians per forward+backward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenes",
        default="a,b,blur,ed,engine,engine-pose",
        help=f"comma-separated scenes out of {','.join(SCENES)} (default: all)",
    )
    parser.add_argument("--impls", default="cpu,reference", help="comma-separated: cpu, reference (default: both)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats for the CPU path (median; default 10)")
    parser.add_argument(
        "--ref-repeats", type=int, default=3, help="timed repeats for the slow reference (median; default 3)"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and the renderer (default 2)")
    parser.add_argument(
        "--omp-wait-policy",
        default="passive",
        choices=("passive", "active", "inherit"),
        help="OMP_WAIT_POLICY of the measured processes (default passive: PyTorch's idle OpenMP threads "
        "sleep instead of spinning, which on a busy machine otherwise steal the CPU from the next op; "
        "'inherit' keeps the environment's)",
    )
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
    scene = dict(
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
    if name in ENGINE_SCENES:  # degree-0 SH coefficients of the same colours, black backgrounds
        from posegs_ros.render.sh import SH_C0

        scene.update(
            colors=((scene["colors"] - 0.5) / SH_C0)[:, None, :],  # type: ignore[operator]
            sh_degree=0,
            backgrounds=torch.zeros(n_cams, 3),
        )
    return scene


def _worker(impl: str, scene_name: str, repeats: int, threads: int) -> Result:
    import resource
    import statistics
    import time

    import torch

    from posegs_ros.render import rasterize

    torch.set_num_threads(threads)
    scene = make_scene(scene_name)
    target = scene.pop("target")
    leaves = ["viewmats"]
    if scene_name not in POSE_ONLY_SCENES:
        leaves += ["means", "quats", "scales", "opacities", "colors"]

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
    phases: list[dict[str, float]] = []
    record = None
    if impl == "cpu":
        try:
            from posegs_ros.render.cpu import record_phases
        except ImportError:  # a renderer without phase timers
            pass
        else:
            record = record_phases
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            forward()
        fwd.append(time.perf_counter() - start)
        start = time.perf_counter()
        if record is None:
            forward_backward()
        else:
            with record() as times:
                forward_backward()
            phases.append(times)
        fwd_bwd.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    phases_ms = None
    if phases:
        phases_ms = {k: 1e3 * statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
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
        phases_ms=phases_ms,
    )


def _spawn(impl: str, scene: str, repeats: int, threads: int, wait_policy: str = "inherit") -> Result | str:
    """Run one measurement in a fresh interpreter; a Result, or the error text."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    cmd = [sys.executable, "-m", "posegs_ros.tools.bench.render", "--worker", impl, scene,
           "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return Result(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _table(results: list[Result], failures: list[str], threads: int, load: str = "") -> str:
    lines = [
        f"posegs bench render: {threads} thread(s) for torch and the renderer, times are medians",
        *([load] if load else []),
        "",
        f"{'scene':<12} {'impl':<10} {'reps':>4} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak RSS MB':>12} "
        f"{'first call ms':>14} {'isects':>9}",
    ]
    for r in results:
        isects = "" if r.n_isects is None else str(r.n_isects)
        lines.append(
            f"{r.scene:<12} {r.impl:<10} {r.repeats:>4} {r.forward_ms:>9.1f} {r.forward_backward_ms:>11.1f} "
            f"{r.peak_rss_mb:>12.0f} {r.first_call_ms:>14.0f} {isects:>9}"
        )
        if r.phases_ms:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r.phases_ms.items())
            lines.append(f"{'':<12} phases ms: {parts} (rest: PyTorch, loss, autograd)")
    by_key = {(r.scene, r.impl): r for r in results}
    ratios = []
    for name in dict.fromkeys(r.scene for r in results):
        cpu, ref = by_key.get((name, "cpu")), by_key.get((name, "reference"))
        if cpu and ref:
            ratios.append(
                f"  {name:<11} reference / cpu: forward {ref.forward_ms / cpu.forward_ms:5.1f}x, "
                f"forward+backward {ref.forward_backward_ms / cpu.forward_backward_ms:5.1f}x"
            )
    if ratios:
        lines += ["", "speed ratio (same run):"] + ratios
    lines += ["", "scenes:"] + [f"  {k:<11} {SCENES[k][0]}" for k in dict.fromkeys(r.scene for r in results)]
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
    load_before = os.getloadavg()[0]
    for scene in scenes:
        for impl in impls:
            repeats = args.repeats if impl == "cpu" else args.ref_repeats
            if not args.json:
                print(f"measuring {impl} on scene {scene} ({SCENES[scene][0]}) ...", file=sys.stderr, flush=True)
            outcome = _spawn(impl, scene, repeats, args.threads, args.omp_wait_policy)
            if isinstance(outcome, Result):
                results.append(outcome)
            else:
                failures.append(f"{impl} on {scene}: {outcome}")
    policy = os.environ.get("OMP_WAIT_POLICY", "default") if args.omp_wait_policy == "inherit" else args.omp_wait_policy
    load = (
        f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (on {os.cpu_count()} CPUs); "
        f"OMP_WAIT_POLICY {policy}"
    )
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "failures": failures, "load": load}, indent=2))
    else:
        print(_table(results, failures, args.threads, load))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="posegs bench render", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
