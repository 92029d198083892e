"""The node's parameter table, config/posegs.yaml and its type fidelity (ROS-free)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from ros_support import REPO

from posegs_ros.config import ConfigError, PosegsConfig, flatten, load_config, parameter_table
from posegs_ros.ros.params import (
    PARAMETER_FILE_KEY,
    ROS_PREFIX,
    NodeSettings,
    _yaml_scalar,
    main,
    markdown_parameter_table,
    parameter_file_text,
    parameter_specs,
    settings_from_parameters,
)

CONFIG_FILE = REPO / "config" / "posegs.yaml"


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_engine_field_and_node_setting_is_a_parameter() -> None:
    specs = parameter_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    engine = [name for name, _, _ in parameter_table()]
    assert names[: len(engine)] == engine
    node = [n for n in names if n.startswith(ROS_PREFIX)]
    assert node == [ROS_PREFIX + n for n in flatten(NodeSettings())]
    assert len(names) == len(engine) + len(node)
    for spec in specs:
        assert spec.description, spec.name
        assert type(spec.default) is spec.type, spec.name  # ROS infers the parameter type from the default
        assert spec.type in (bool, int, float, str)


def test_repository_parameter_file_is_the_generated_one() -> None:
    assert CONFIG_FILE.read_text(encoding="utf-8") == parameter_file_text(), (
        "config/posegs.yaml is stale: regenerate with `python -m posegs_ros.ros.params yaml > config/posegs.yaml`"
    )


def test_parameter_file_reads_back_with_the_declared_types() -> None:
    data = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    assert list(data) == [PARAMETER_FILE_KEY]
    values = _flat(data[PARAMETER_FILE_KEY]["ros__parameters"])
    specs = {s.name: s for s in parameter_specs()}
    assert set(values) == set(specs)
    for name, value in values.items():
        assert type(value) is specs[name].type, f"{name}: YAML gives {type(value).__name__}"
        assert value == specs[name].default
    # the engine side of the same file, through the engine's own loader
    assert flatten(load_config(CONFIG_FILE)) == flatten(PosegsConfig())
    config, settings = settings_from_parameters(values)
    assert config == PosegsConfig() and settings == NodeSettings()


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e-05, "1.0e-05"), (1.6e-4, "0.00016"), (1e16, "1.0e+16"), (2.0, "2.0"), (True, "true"), (3, "3"),
     ("a: b", '"a: b"'), ("", '""'), (float("inf"), ".inf")],
)
def test_yaml_scalars_keep_their_type(value: object, text: str) -> None:
    assert _yaml_scalar(value) == text
    assert yaml.safe_load(f"x: {text}")["x"] == value


def test_settings_from_parameters_applies_and_validates() -> None:
    config, settings = settings_from_parameters(
        {"tracking.gn_iterations": 3, "blur.enabled": False, "ros.queue_size": 5,
         "ros.image_qos.reliability": "reliable", "ros.camera_frame": "cam"}
    )
    assert config.tracking.gn_iterations == 3 and config.blur.enabled is False
    assert settings.queue_size == 5 and settings.image_qos.reliability == "reliable" and settings.camera_frame == "cam"
    assert settings.camera_info_qos.reliability == "best_effort"  # untouched group keeps its default
    bad = [
        ({"ros.queue_size": 0}, "ros.queue_size must be >= 1|must be > 0"),
        ({"ros.queue_size": "two"}, "ros.queue_size: expected an integer"),
        ({"ros.image_qos.reliability": "sometimes"}, "ros.image_qos.reliability: 'sometimes' is not one of"),
        ({"ros.image_transport": "theora"}, "ros.image_transport"),
        ({"ros.no_such": 1}, "unknown node parameter.*ros.no_such"),
        ({"tracking.no_such": 1}, "unknown config parameter"),
        ({"ros.map_frame": ""}, "map_frame must not be empty"),
        ({"ros.loop_reset_s": -1.0}, "loop_reset_s must be >= 0"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=message):
            settings_from_parameters(values)


def test_node_settings_are_all_documented_dataclass_leaves() -> None:
    for f in dataclasses.fields(NodeSettings):
        if not dataclasses.is_dataclass(f.type) and f.name not in ("image_qos", "camera_info_qos"):
            assert f.metadata.get("help"), f.name


def test_markdown_table_lists_every_parameter() -> None:
    table = markdown_parameter_table()
    for spec in parameter_specs():
        assert f"| `{spec.name}` |" in table


def test_cli_prints_both_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["yaml"]) == 0
    assert capsys.readouterr().out == parameter_file_text()
    assert main(["markdown"]) == 0
    assert capsys.readouterr().out == markdown_parameter_table()


def test_preset_parameter_sets_the_defaults_of_the_others() -> None:
    from posegs_ros.config import preset_config

    best = preset_config("best")
    specs = {s.name: s.default for s in parameter_specs("best")}
    assert specs["preset"] == "best" and specs["mapping.final_steps_per_view"] == best.mapping.final_steps_per_view
    assert {s.name: s.default for s in parameter_specs()}["mapping.final_steps_per_view"] == \
        PosegsConfig().mapping.final_steps_per_view
    # the node passes every declared value: the preset's defaults, one explicitly set parameter
    values = {**specs, "mapping.final_rounds": 2}
    config, _ = settings_from_parameters(values)
    assert config.preset == "best" and config.mapping.final_rounds == 2
    assert config.blur.max_subframes == best.blur.max_subframes
    config, _ = settings_from_parameters({"preset": "fast"})
    assert config.mapping.final_steps_per_view == preset_config("fast").mapping.final_steps_per_view
    with pytest.raises(ConfigError, match="unknown preset"):
        settings_from_parameters({"preset": "turbo"})
