"""The parameters of ``reconstruct_node``: one table, ROS-free.

Two groups, both flat dotted names:

- every leaf of the engine's :class:`~posegs_ros.config.PosegsConfig` (``tracking.gn_iterations``,
  ``blur.subframes``...), from :func:`posegs_ros.config.parameter_table`;
- node settings under ``ros.`` (:class:`NodeSettings`: frames, QoS, queue, rates, save path).

The node declares one ROS parameter per :class:`ParameterSpec` (read-only, with its
description); ``config/posegs.yaml`` is :func:`parameter_file_text` and the parameter table in
``README.md`` (ROS 2 section) is :func:`markdown_parameter_table` (tests check both stay equal).
Regenerate them with ``python -m posegs_ros.ros.params yaml|markdown``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..config import ConfigError, PosegsConfig, apply_flat, config_from_dict, flatten, parameter_table, preset_config

__all__ = [
    "ROS_PREFIX",
    "NODE_NAME",
    "PARAMETER_FILE_KEY",
    "RELIABILITIES",
    "DURABILITIES",
    "IMAGE_TRANSPORTS",
    "QosSettings",
    "NodeSettings",
    "ParameterSpec",
    "validate_node_settings",
    "node_parameter_table",
    "parameter_specs",
    "settings_from_parameters",
    "parameter_file_text",
    "markdown_parameter_table",
]

ROS_PREFIX = "ros."
NODE_NAME = "posegs_node"  # default node name (launch uses it too)
PARAMETER_FILE_KEY = "/**"  # config/posegs.yaml applies to the node whatever its name / namespace

RELIABILITIES = ("best_effort", "reliable")
DURABILITIES = ("volatile", "transient_local")
IMAGE_TRANSPORTS = ("raw", "compressed")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - same field helper style as posegs_ros.config
    return field(default=default, metadata={"help": help})


@dataclass
class QosSettings:
    """QoS of one subscription."""

    reliability: str = _f("best_effort", "best_effort (sensor data, matches every publisher) | reliable")
    durability: str = _f(
        "volatile", "volatile | transient_local (receive a latched message published before the node started)"
    )
    depth: int = _f(5, "history depth (keep last)")


@dataclass
class NodeSettings:
    """What the node itself needs (the ``ros.`` parameters); the engine never sees these."""

    map_frame: str = _f("map", "fixed frame of poses, path, map cloud and keyframe markers")
    camera_frame: str = _f(
        "", "TF child frame of the camera pose and frame_id of output images; empty = the image header's frame_id"
    )
    object_frame_prefix: str = _f("posegs_object_", "moving object g is published as TF frame <prefix><g>")
    image_transport: str = _f(
        "raw", "raw: sensor_msgs/Image on `image` | compressed: sensor_msgs/CompressedImage on `image/compressed`"
    )
    image_qos: QosSettings = field(default_factory=QosSettings)
    camera_info_qos: QosSettings = field(default_factory=QosSettings)
    queue_size: int = _f(2, "input queue length; when full the oldest image is dropped and counted")
    loop_reset_s: float = _f(
        1.0, "an image stamp at least this much older than the previous one (bag loop) resets the map; "
        "smaller steps back skip the image"
    )
    reset_after_failures: int = _f(
        3, "consecutive engine errors or non-finite poses after which the map is reset (0 = never)"
    )
    map_cloud_period_s: float = _f(2.0, "publish ~/map_cloud at most this often, in seconds (0 = never)")
    render_period_s: float = _f(
        0.0, "render ~/deblurred and ~/depth at most this often, in seconds (0 = every tracked frame for which "
        "no newer image is waiting: renders use the time tracking leaves before the next image)"
    )
    warm_up: bool = _f(
        True, "before subscribing, compile / load the kernels and run the engine once on a tiny made-up "
        "sequence, so the first camera frames are not lost to compilation"
    )
    status_period_s: float = _f(1.0, "publish ~/status and /diagnostics at least this often, in seconds")
    stale_after_s: float = _f(5.0, "/diagnostics reports STALE when no image arrived for this long (seconds)")
    path_max_poses: int = _f(
        2000, "~/path keeps the newest poses only (0 = all; each published path costs ~0.1 ms per pose)"
    )
    frustum_depth: float = _f(0.05, "depth of the keyframe frustums in ~/keyframes (map units)")
    save_path: str = _f("~/.ros/posegs/map.ply", "~/save_map writes here when its request has an empty path")
    save_on_shutdown: bool = _f(False, "write the map to save_path when the node shuts down")
    service_timeout_s: float = _f(
        120.0, "how long ~/save_map and ~/reset wait for the frame being processed to finish (seconds)"
    )
    log_throttle_s: float = _f(5.0, "repeated warnings of one kind are logged at most this often (seconds)")


@dataclass(frozen=True)
class ParameterSpec:
    """One ROS parameter: dotted name, default, description and Python type (bool/int/float/str)."""

    name: str
    default: Any
    description: str
    type: type


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{ROS_PREFIX}{name}: {value!r} is not one of {', '.join(choices)}")


def validate_node_settings(settings: NodeSettings) -> None:
    """Raise :class:`~posegs_ros.config.ConfigError` for values the node cannot work with."""
    _check_choice("image_transport", settings.image_transport, IMAGE_TRANSPORTS)
    for prefix, qos in (("image_qos", settings.image_qos), ("camera_info_qos", settings.camera_info_qos)):
        _check_choice(f"{prefix}.reliability", qos.reliability, RELIABILITIES)
        _check_choice(f"{prefix}.durability", qos.durability, DURABILITIES)
        if qos.depth < 1:
            raise ConfigError(f"{ROS_PREFIX}{prefix}.depth must be >= 1, got {qos.depth}")
    if not settings.map_frame:
        raise ConfigError(f"{ROS_PREFIX}map_frame must not be empty")
    positive = {
        "queue_size": settings.queue_size,
        "status_period_s": settings.status_period_s,
        "stale_after_s": settings.stale_after_s,
        "frustum_depth": settings.frustum_depth,
        "service_timeout_s": settings.service_timeout_s,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{ROS_PREFIX}{name} must be > 0, got {value}")
    non_negative = {
        "loop_reset_s": settings.loop_reset_s,
        "reset_after_failures": settings.reset_after_failures,
        "map_cloud_period_s": settings.map_cloud_period_s,
        "render_period_s": settings.render_period_s,
        "path_max_poses": settings.path_max_poses,
        "log_throttle_s": settings.log_throttle_s,
    }
    for name, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{ROS_PREFIX}{name} must be >= 0, got {value}")


def _leaf_types(cls: type, prefix: str = "") -> dict[str, type]:
    import typing

    out: dict[str, type] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            out.update(_leaf_types(typ, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = typ
    return out


def node_parameter_table(settings: NodeSettings | None = None) -> list[tuple[str, Any, str]]:
    """``(name without "ros.", default, description)`` of every node setting."""
    return parameter_table(settings or NodeSettings())  # type: ignore[arg-type] - any config dataclass walks


def parameter_specs(preset: str | None = None) -> list[ParameterSpec]:
    """Every parameter of the node: engine config leaves (defaults of ``preset``; ``preset``
    itself first), then ``ros.`` node settings."""
    engine_types = _leaf_types(PosegsConfig)
    node_types = _leaf_types(NodeSettings)
    base = preset_config(preset) if preset is not None else PosegsConfig()
    specs = [ParameterSpec(name, value, text, engine_types[name]) for name, value, text in parameter_table(base)]
    specs += [
        ParameterSpec(ROS_PREFIX + name, value, text, node_types[name]) for name, value, text in node_parameter_table()
    ]
    return specs


def nest_parameters(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted parameter names ``{"a.b": v}`` as a nested tree ``{"a": {"b": v}}``."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def settings_from_parameters(values: Mapping[str, Any]) -> tuple[PosegsConfig, NodeSettings]:
    """Engine config and node settings from ``{dotted name: value}`` (missing names keep defaults).

    Raises:
        ConfigError: unknown names, wrongly typed or invalid values (the message names the parameter).
    """
    engine: dict[str, Any] = {}
    node: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith(ROS_PREFIX):
            node[name[len(ROS_PREFIX):]] = value
        else:
            engine[name] = value
    config = apply_flat(preset_config(str(engine.get("preset", PosegsConfig.preset))), engine)
    known = flatten(NodeSettings())
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ConfigError(f"unknown node parameter(s): {', '.join(ROS_PREFIX + n for n in unknown)}")
    settings = config_from_dict(nest_parameters(node), NodeSettings, ROS_PREFIX)
    validate_node_settings(settings)
    return config, settings


# ---------------------------------------------------------------------------- generated files


def _yaml_scalar(value: Any) -> str:
    """A YAML scalar that both PyYAML and ROS 2's parameter parser read with the intended type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            if "." not in mantissa:
                mantissa += ".0"  # YAML 1.1 floats need the dot: "1e-05" would be a string
            if exponent[0] not in "+-":
                exponent = "+" + exponent
            text = f"{mantissa}e{exponent}"
        return text
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted YAML scalar: always a string
    raise TypeError(f"no YAML form for {value!r}")


def parameter_file_text(node_key: str = PARAMETER_FILE_KEY) -> str:
    """``config/posegs.yaml``: every parameter's default in ROS 2 parameter-file layout, commented."""
    lines = [
        "# Defaults of every reconstruct_node parameter (ROS 2 parameter-file layout).",
        "# Generated by `python -m posegs_ros.ros.params yaml`; tests/ros checks it equals the code's",
        "# defaults. posegs_ros.config.load_config() reads the engine part without ROS.",
        f"{node_key}:",
        "  ros__parameters:",
    ]
    opened: list[str] = []
    for spec in parameter_specs():
        *parents, leaf = spec.name.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        opened = opened[:common]
        for part in parents[common:]:
            lines.append("    " + "  " * len(opened) + f"{part}:")
            opened.append(part)
        indent = "    " + "  " * len(opened)
        lines.append(f"{indent}# {spec.description}")
        lines.append(f"{indent}{leaf}: {_yaml_scalar(spec.default)}")
    return "\n".join(lines) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_parameter_table() -> str:
    """The parameter table of ``README.md``'s ROS 2 section (Markdown)."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for spec in parameter_specs():
        default = json.dumps(spec.default) if isinstance(spec.default, str) else _yaml_scalar(spec.default)
        cells = [f"`{spec.name}`", spec.type.__name__, f"`{_markdown_cell(default)}`", _markdown_cell(spec.description)]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posegs_ros.ros.params yaml|markdown``: print a generated file."""
    parser = argparse.ArgumentParser(prog="python -m posegs_ros.ros.params", description=main.__doc__)
    parser.add_argument("what", choices=("yaml", "markdown"), help="config/posegs.yaml or the docs table")
    args = parser.parse_args(argv)
    sys.stdout.write(parameter_file_text() if args.what == "yaml" else markdown_parameter_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
