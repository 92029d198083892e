"""Packaging of the ROS 2 side, checked without ROS: package.xml, CMakeLists.txt, the node
script, the launch file, the RViz config, and that only the node imports rclpy."""

from __future__ import annotations

import ast
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from ros_support import REPO, launch_arguments

from posegs_ros.ros.topics import PUBLICATIONS, SERVICES, SUBSCRIPTIONS

ROS_MODULES = {"node.py", "rclpy_messages.py"}  # the only modules that may import ROS packages
ROS_PACKAGES = {
    "rclpy", "rcl_interfaces", "rosidl_runtime_py", "tf2_ros", "tf2_msgs", "sensor_msgs", "std_msgs", "std_srvs",
    "geometry_msgs", "nav_msgs", "visualization_msgs", "diagnostic_msgs", "builtin_interfaces", "launch",
    "launch_ros", "launch_testing", "launch_testing_ros",
}


def _compiles(path: Path) -> None:
    """Byte-compile ``path`` (syntax check of a file that needs ROS to run)."""
    compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)


def _package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _deps(root: ET.Element, *tags: str) -> set[str]:
    return {e.text.strip() for tag in tags for e in root.findall(tag) if e.text}


def test_package_xml_declares_the_build_and_every_dependency() -> None:
    root = _package_xml()
    assert root.get("format") == "3" and root.findtext("name") == "posegs_ros"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    maintainer = root.find("maintainer")
    assert re.fullmatch(r"[\w.+-]+@[\w-]+(\.[\w-]+)*\.[a-z]{2,}", maintainer.get("email")), "catkin_pkg rejects it"
    assert root.findtext("license") == "Apache-2.0"
    buildtool = _deps(root, "buildtool_depend")
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= buildtool
    run = _deps(root, "depend", "exec_depend")
    assert {
        "rosidl_default_runtime", "rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "tf2_ros_py",
        "visualization_msgs", "diagnostic_msgs", "std_srvs", "builtin_interfaces", "launch", "launch_ros",
        "rosbag2", "ros2bag", "rviz2", "python3-numpy", "python3-opencv", "python3-yaml",
    } <= run
    assert {"ament_cmake_pytest", "launch_testing", "launch_testing_ament_cmake", "launch_testing_ros"} <= _deps(
        root, "test_depend"
    )
    # every ROS package the Python code imports is declared
    imported = set()
    for path in (REPO / "posegs_ros" / "ros").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    ros_imports = (imported & ROS_PACKAGES) - {"tf2_ros"}
    assert ros_imports <= run, ros_imports - run


def test_package_xml_passes_catkin_pkg_validation() -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg (as in colcon's configure step)")
    package = catkin_pkg.parse_package(str(REPO / "package.xml"))
    package.validate()


def test_cmakelists_generates_interfaces_and_installs_python_per_ros2_notes() -> None:
    text = (REPO / "CMakeLists.txt").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # without comments
    interfaces = sorted(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', code))
    on_disk = sorted(str(p.relative_to(REPO)) for d in ("msg", "srv") for p in (REPO / d).glob(f"*.{d}"))
    assert interfaces == on_disk
    assert "rosidl_generate_interfaces(${PROJECT_NAME}" in code
    assert "ament_python_install_package" not in code  # clashes with rosidl's Python package
    assert "_ament_cmake_python_get_python_install_dir()" in code
    compact = re.sub(r"\s+", " ", code)
    assert "install( DIRECTORY ${PROJECT_NAME}/ DESTINATION ${PYTHON_INSTALL_DIR}/${PROJECT_NAME}" in compact
    assert "install(PROGRAMS scripts/reconstruct_node DESTINATION lib/${PROJECT_NAME})" in code
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in code
    testing = code[code.index("if(BUILD_TESTING)") : code.index("endif()", code.index("if(BUILD_TESTING)"))]
    assert "ament_add_pytest_test(" in testing and "tests/ros/test_*.py" in testing
    launch_tests = re.findall(r"add_launch_test\(\s*(\S+)", testing)
    assert launch_tests and all((REPO / t).is_file() for t in launch_tests)
    assert code.rstrip().endswith("ament_package()")


def test_node_script_is_an_executable_python_entry_point() -> None:
    script = REPO / "scripts" / "reconstruct_node"
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env python3\n") and "from posegs_ros.ros.node import main" in text
    _compiles(script)


def test_only_the_node_modules_import_ros() -> None:
    offenders = []
    for path in (REPO / "posegs_ros").rglob("*.py"):
        if path.parent.name == "ros" and path.name in ROS_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ROS_PACKAGES]
    assert not offenders
    for name in ROS_MODULES:
        _compiles(REPO / "posegs_ros" / "ros" / name)


def test_pure_modules_import_without_ros() -> None:
    import importlib

    for path in sorted((REPO / "posegs_ros" / "ros").glob("*.py")):
        if path.name not in ROS_MODULES and path.name != "__init__.py":
            importlib.import_module(f"posegs_ros.ros.{path.stem}")


def _launch_source() -> str:
    return (REPO / "launch" / "reconstruct.launch.py").read_text()


def test_launch_file_compiles_and_declares_its_arguments() -> None:
    path = REPO / "launch" / "reconstruct.launch.py"
    _compiles(path)
    tree = ast.parse(_launch_source())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    arguments = launch_arguments()
    assert {"config", "preset", "image_topic", "camera_info_topic", "namespace", "bag", "rate", "rviz"} <= set(arguments)
    assert arguments["rviz"] == "false" and arguments["bag"] == "" and float(arguments["rate"]) == 1.0
    source = _launch_source()
    assert '"--clock"' in source and '"use_sim_time"' in source and "posegs.rviz" in source
    assert 'executable="reconstruct_node"' in source and '{"preset": preset}' in source


def test_launch_node_name_matches_the_node_default() -> None:
    from posegs_ros.ros.params import NODE_NAME

    assert f'NODE_NAME = "{NODE_NAME}"' in _launch_source()


def test_rviz_config_shows_the_outputs_in_the_map_frame() -> None:
    config = yaml.safe_load((REPO / "config" / "posegs.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Class"].split("/")[-1]: d for d in manager["Displays"]}
    assert {"TF", "Path", "Image", "PointCloud2", "MarkerArray"} <= set(displays)
    from posegs_ros.ros.params import NODE_NAME

    topics = {d["Class"].split("/")[-1]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    names = {e.key: e.name.replace("~", NODE_NAME) for e in PUBLICATIONS}
    assert topics == {
        "Path": names["path"], "PointCloud2": names["map_cloud"], "MarkerArray": names["keyframes"],
        "Image": names["deblurred"],
    }
    assert displays["PointCloud2"]["Color Transformer"] == "RGB8"


def test_interface_tables_are_consistent() -> None:
    keys = [e.key for e in SUBSCRIPTIONS + PUBLICATIONS + SERVICES]
    assert len(keys) == len(set(keys))
    required = {"deblurred", "depth", "path", "map_cloud", "keyframes", "status", "diagnostics"}
    assert {e.key for e in PUBLICATIONS} >= required
    assert all(e.name.startswith("~/") for e in SERVICES)


def test_setup_py_still_packages_the_ros_free_side() -> None:
    from setuptools import find_packages

    packages = find_packages(where=str(REPO), include=["posegs_ros", "posegs_ros.*"])
    assert "posegs_ros.ros" in packages and "posegs_ros.io" in packages
    assert "msg" not in packages and "srv" not in packages
    assert "find_packages" in (REPO / "setup.py").read_text()
