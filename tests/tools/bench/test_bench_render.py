"""``posegs bench render``: arguments, scenes and the report (no timing assertions)."""

from __future__ import annotations

import argparse

import pytest
import torch

from posegs_ros.tools.bench import render as bench_render


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_render.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_unknown_scene(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse()
    assert (args.repeats, args.threads) == (10, 2)
    assert args.scenes.split(",") == list(bench_render.SCENES)
    assert bench_render.run(parse("--scenes", "zz")) == 2
    assert "unknown" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(bench_render.SCENES))
def test_scenes_follow_the_standard(name: str) -> None:
    scene = bench_render.make_scene(name)
    _, n, width, height, focal, n_cams, mode = bench_render.SCENES[name]
    means = scene["means"]
    assert means.shape == (n, 3) and scene["viewmats"].shape == (n_cams, 4, 4)
    assert means[:, 2].min() >= 1.0 and means[:, 2].max() <= 5.0
    assert (means[:, 0].abs() <= 0.5 * width / focal * means[:, 2] + 1e-6).all()  # inside the frustum
    assert scene["scales"].min() >= 0.01 and scene["scales"].max() <= 0.03
    assert torch.all(scene["opacities"] == 0.5)
    assert scene["render_mode"] == mode


def test_report_lists_ratios() -> None:
    def result(impl: str, ms: float) -> bench_render.Result:
        return bench_render.Result("a", impl, 2, 3, 100.0, ms / 3, ms, 400.0, 123)

    text = bench_render._table([result("cpu", 40.0), result("reference", 800.0)], [], 2)
    assert "2 thread(s)" in text and "forward+backward  20.0x" in text


def test_report_lists_phases_and_load() -> None:
    phases = {"project": 1.0, "bin": 2.0, "raster_fwd": 3.0}
    r = bench_render.Result("engine", "cpu", 2, 3, 100.0, 10.0, 30.0, 400.0, 123, phases)
    text = bench_render._table([r], [], 2, "1-minute load average: 0.50 before, 0.70 after (on 2 CPUs)")
    assert "raster_fwd 3.0" in text and "load average: 0.50" in text


def test_engine_scenes_render_like_the_engine() -> None:
    scene = bench_render.make_scene("engine-pose")
    assert scene["sh_degree"] == 0 and scene["colors"].shape == (30_000, 1, 3)
    assert scene["backgrounds"].shape == (5, 3) and "engine-pose" in bench_render.POSE_ONLY_SCENES
