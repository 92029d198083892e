"""Argument handling and tables of the quality, dynamic and pipeline benchmarks (no runs)."""

from __future__ import annotations

import argparse

import pytest

from posegs_ros.tools.bench import dynamic as bench_dynamic
from posegs_ros.tools.bench import pipeline as bench_pipeline
from posegs_ros.tools.bench import quality as bench_quality


def _parse(module, *argv: str) -> argparse.Namespace:  # noqa: ANN001 - a bench module
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_default_quality_variants_are_all_known() -> None:
    args = _parse(bench_quality)
    names = [v.strip() for v in args.variants.split(",")]
    assert names == list(bench_quality.VARIANTS)
    assert {"full", "blur off", "two-step"} <= set(names)
    assert any(sharp for _, sharp in bench_quality.VARIANTS.values())


def test_unknown_quality_variant_is_refused_before_any_work() -> None:
    with pytest.raises(SystemExit, match="unknown variant"):
        bench_quality.run(_parse(bench_quality, "--variants", "full,nope"))


def test_quality_table_shows_the_gain() -> None:
    row = {"variant": "full", "ate_cm": 0.4, "ate_online_cm": 0.6, "psnr_deblurred": 29.3, "psnr_input": 25.2,
           "ssim_deblurred": 0.9, "fps": 0.8, "final_refinement_s": 300.0, "keyframes": 7, "gaussians": 60000}
    table = bench_quality.format_table([row])
    assert "| full | 0.40 | 0.60 | 29.30 | 25.20 | +4.10 |" in table


def test_dynamic_runs_subset_and_bad_numbers() -> None:
    assert _parse(bench_dynamic).runs == "0,1,2,3"
    with pytest.raises(SystemExit, match="--runs takes numbers"):
        bench_dynamic.run(_parse(bench_dynamic, "--runs", "0,9"))


def test_dynamic_table_marks_missing_mask_numbers() -> None:
    row = {"run": "static sequence, groups off", "ate_cm": 0.4, "ate_online_cm": 0.6, "psnr": 29.0,
           "psnr_input": 25.2, "psnr_in_mask": None, "iou": None, "groups_spawned": 0}
    assert "| – | – | 0 |" in bench_dynamic.format_table([row])


def test_dynamic_suite_variants_targets_and_table() -> None:
    args = _parse(bench_dynamic, "--suite")
    assert args.suite and [v.strip() for v in args.variants.split(",")] == list(bench_dynamic.SUITE)
    assert len(bench_dynamic.SUITE) >= 5
    assert any(v.get("objects", 1) >= 2 for v in bench_dynamic.SUITE.values())
    assert {v.get("object_motion", "swing") for v in bench_dynamic.SUITE.values()} == {"swing", "slide", "spin"}
    with pytest.raises(SystemExit, match="unknown variant"):
        bench_dynamic.run(_parse(bench_dynamic, "--suite", "--variants", "swing,nope"))
    row = {"variant": "large fast slide", "object_area": 0.21, "object_blur_px": 11.4, "object_frames": 41,
           "frames": 60, "ate_cm": 0.5, "ate_online_cm": 0.9, "ate_no_objects_cm": 0.2, "iou": 0.71,
           "psnr_in_mask": 24.0, "psnr_input_in_mask": 20.0, "psnr": 27.0, "psnr_input": 25.0, "groups_spawned": 1,
           "seconds": 900.0}
    row["targets_met"] = met = bench_dynamic.suite_targets_met(row)
    assert met == {"ate": False, "iou": True, "psnr_in_object": True, "psnr": False}
    line = bench_dynamic.format_suite_table([row]).splitlines()[-1]
    assert line == ("| large fast slide | 21 % / 11.4 / 41 of 60 | 0.50 ✗ / 0.90 | 0.20 | 0.710 | 24.00 / 20.00 "
                    "| 27.00 ✗ / 25.00 | 1 | 900 |")
    no_mask = {**row, "iou": None, "psnr_in_mask": None}
    assert not any(bench_dynamic.suite_targets_met(no_mask)[k] for k in ("iou", "psnr_in_object"))


def test_pipeline_defaults_are_the_default_sequence() -> None:
    args = _parse(bench_pipeline)
    assert (args.frames, args.width, args.height, args.profile) == (60, 320, 240, False)


def test_quality_suite_sequences_and_table() -> None:
    args = _parse(bench_quality, "--suite")
    assert args.suite and [s.strip() for s in args.sequences.split(",")] == list(bench_quality.SUITE)
    assert {"default", "fine texture"} <= set(bench_quality.SUITE) and len(bench_quality.SUITE) >= 4
    with pytest.raises(SystemExit, match="unknown sequence"):
        bench_quality.run(_parse(bench_quality, "--suite", "--sequences", "default,nope"))
    row = {"sequence": "fine texture", "blur_px": 5.6, "psnr_deblurred": 27.5, "psnr_input": 22.0, "psnr_ceiling": 29.0,
           "ssim_deblurred": 0.9, "ssim_input": 0.7, "ssim_ceiling": 0.93, "ate_cm": 0.2, "ate_online_cm": 0.5,
           "gaussians": 80000, "seconds_per_frame": 1.4}
    assert "| fine texture | 5.6 | 27.50 / 22.00 / 29.00 | +5.50 | -1.50 |" in bench_quality.format_suite_table([row])
    no_twin = {**row, "psnr_ceiling": float("nan"), "ssim_ceiling": float("nan")}
    assert "| 27.50 / 22.00 / - | +5.50 | - | 0.900 / 0.700 / - |" in bench_quality.format_suite_table([no_twin])
    assert _parse(bench_quality, "--suite", "--no-ceiling").no_ceiling


def test_presets_are_offered_by_every_bench_and_override_order() -> None:
    from posegs_ros.tools.replay import config_from_args

    for module in (bench_quality, bench_dynamic, bench_pipeline):
        assert _parse(module, "--preset", "fast").preset == "fast"
    cfg = config_from_args(_parse(bench_quality, "--preset", "fast", "--set", "blur.subframes=6"))
    assert cfg.preset == "fast" and cfg.blur.subframes == 6


def test_dynamic_suite_reuses_a_finished_run_only_with_the_same_configuration(tmp_path) -> None:  # noqa: ANN001
    import json
    import os

    from posegs_ros.config import PosegsConfig, apply_flat, config_to_dict

    cfg = apply_flat(PosegsConfig(), {"dynamic.enabled": True})
    seq, out = tmp_path / "no_objects", tmp_path / "run_no_objects"
    (seq / "bag").mkdir(parents=True)
    out.mkdir()
    (seq / "meta.json").write_text("{}")
    assert bench_dynamic._finished_ate(out, cfg) is None  # nothing finished yet
    (out / "metrics.json").write_text(json.dumps({"bag": str(seq / "bag"), "config": config_to_dict(cfg)}))
    (out / "eval.json").write_text(json.dumps({"trajectory": {"ate_rmse_sim3": 0.0019}}))
    assert bench_dynamic._finished_ate(out, cfg) == 0.0019
    assert bench_dynamic._finished_ate(out, PosegsConfig()) is None  # another configuration
    later = (out / "eval.json").stat().st_mtime + 10
    os.utime(seq / "meta.json", (later, later))  # the sequence was regenerated after the run
    assert bench_dynamic._finished_ate(out, cfg) is None
