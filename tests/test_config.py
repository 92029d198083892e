"""The configuration tree: YAML loading, ROS parameter files, dotted overrides, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from posegs_ros.config import (
    ConfigError, PosegsConfig, apply_flat, flatten, load_config, parameter_table,
)


def test_defaults_and_overlay(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("tracking:\n  gn_iterations: 3\nblur:\n  subframes: 7\n")
    cfg = load_config(f)
    assert cfg.tracking.gn_iterations == 3 and cfg.blur.subframes == 7
    assert cfg.mapping.max_gaussians == PosegsConfig().mapping.max_gaussians


def test_ros_parameter_file_layout(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "posegs_node:\n  ros__parameters:\n    use_sim_time: true\n    ros:\n      map_frame: map\n"
        "    keyframes:\n      window_size: 4\n"
    )
    assert load_config(f).keyframes.window_size == 4


def test_errors_are_clear(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("tracking:\n  gn_iteration: 3\n")
    with pytest.raises(ConfigError, match="unknown config key.*gn_iteration"):
        load_config(f)
    f.write_text("tracking:\n  gn_iterations: lots\n")
    with pytest.raises(ConfigError, match="tracking.gn_iterations: expected an integer"):
        load_config(f)
    f.write_text("blur: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    f.write_text("mapping:\n  lr_colors: a lot\n")
    with pytest.raises(ConfigError, match="mapping.lr_colors: expected a number"):
        load_config(f)
    with pytest.raises(ConfigError, match="subframes >= 0"):
        load_config(overrides={"blur.subframes": -1})
    with pytest.raises(ConfigError, match="subframe_spacing_px > 0"):
        load_config(overrides={"blur.subframe_spacing_px": 0.0})
    with pytest.raises(ConfigError, match="final_precondition >= 0"):
        load_config(overrides={"blur.final_precondition": float("nan")})
    with pytest.raises(ConfigError, match="final_precondition_tiles >= 1"):
        load_config(overrides={"blur.final_precondition_tiles": 0})


def test_exponent_without_a_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 1e-2 as the string '1e-2'; a float setting takes it as 0.01
    f = tmp_path / "c.yaml"
    f.write_text("mapping:\n  lr_colors: 1e-2\n")
    assert load_config(f).mapping.lr_colors == 0.01
    assert load_config(overrides={"mapping.lr_scales": "2E-3"}).mapping.lr_scales == 0.002


def test_flat_round_trip_and_table() -> None:
    cfg = apply_flat(PosegsConfig(), {"blur.enabled": False, "mapping.lr_means": 1})
    flat = flatten(cfg)
    assert flat["blur.enabled"] is False and flat["mapping.lr_means"] == 1.0
    with pytest.raises(ConfigError, match="unknown config parameter"):
        apply_flat(cfg, {"nope.x": 1})
    table = parameter_table()
    assert len(table) == len(flat)
    assert all(help_text for _, _, help_text in table)


def test_repository_yaml_matches_defaults() -> None:
    path = Path(__file__).resolve().parents[1] / "config" / "posegs.yaml"
    assert flatten(load_config(path)) == flatten(PosegsConfig())


def test_presets_differ_as_documented_and_explicit_settings_win(tmp_path: Path) -> None:
    from posegs_ros.config import PRESETS, preset_config

    assert set(PRESETS) == {"fast", "balanced", "best"} and PRESETS["balanced"] == {}
    fast, balanced, best = (preset_config(n) for n in ("fast", "balanced", "best"))
    assert balanced == dataclasses.replace(PosegsConfig(), preset="balanced")  # balanced = the defaults
    # fewer final-refinement steps and sub-frames for fast, more of everything for best
    per_view = [c.mapping.final_steps_per_view for c in (fast, balanced, best)]
    caps = [c.mapping.final_iters for c in (fast, balanced, best)]
    assert per_view == sorted(per_view) and len(set(per_view)) == 3
    assert caps == sorted(caps) and len(set(caps)) == 3
    assert fast.blur.max_subframes < balanced.blur.max_subframes < best.blur.max_subframes
    assert best.blur.subframe_spacing_px < balanced.blur.subframe_spacing_px
    # only the listed settings change; tracking is the same in every preset
    for name, changes in PRESETS.items():
        cfg = flatten(preset_config(name))
        base = flatten(PosegsConfig())
        assert {k for k in cfg if cfg[k] != base[k]} == set(changes) | ({"preset"} if name != "balanced" else set())
        assert not any(k.startswith("tracking.") for k in changes)
    # order: defaults < preset < file < --set
    f = tmp_path / "c.yaml"
    f.write_text("preset: best\nmapping:\n  final_rounds: 2\n")
    cfg = load_config(f, overrides={"mapping.final_iters": 7})
    assert cfg.preset == "best" and cfg.mapping.final_rounds == 2 and cfg.mapping.final_iters == 7
    assert cfg.mapping.final_steps_per_view == best.mapping.final_steps_per_view
    assert load_config(f, overrides={"preset": "fast"}).mapping.final_steps_per_view == fast.mapping.final_steps_per_view
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(overrides={"preset": "turbo"})


def test_a_commands_preset_overlay_sits_between_the_preset_and_explicit_settings(tmp_path: Path) -> None:
    """``preset_overlays`` (``posegs demo``'s own settings) apply to their preset only, over the
    preset and under files and ``--set``."""
    from posegs_ros.config import preset_config

    overlays = {"balanced": {"mapping.final_steps_per_view": 12}}
    best_steps = preset_config("best").mapping.final_steps_per_view
    assert load_config(preset_overlays=overlays).mapping.final_steps_per_view == 12
    best = load_config(overrides={"preset": "best"}, preset_overlays=overlays)
    assert best.mapping.final_steps_per_view == best_steps
    f = tmp_path / "c.yaml"
    f.write_text("mapping:\n  final_steps_per_view: 9\n")
    assert load_config(f, preset_overlays=overlays).mapping.final_steps_per_view == 9
    assert load_config(overrides={"mapping.final_steps_per_view": 5},
                       preset_overlays=overlays).mapping.final_steps_per_view == 5
    f.write_text("preset: best\n")  # a file naming another preset leaves the overlay out
    assert load_config(f, preset_overlays=overlays).mapping.final_steps_per_view == best_steps
    with pytest.raises(ConfigError, match="unknown config parameter"):
        load_config(preset_overlays={"balanced": {"mapping.nope": 1}})


def test_a_negative_window_means_rate_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match="window_means_lr_factor must be >= 0"):
        apply_flat(PosegsConfig(), {"mapping.window_means_lr_factor": -0.1})
    with pytest.raises(ConfigError, match="final_means_lr_factor must be >= 0"):
        apply_flat(PosegsConfig(), {"mapping.final_means_lr_factor": -1.0})
