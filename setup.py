"""pip install for the ROS-free engine, I/O and tools of posegs_ros.

colcon ignores this file (package.xml declares ament_cmake, see CMakeLists.txt);
`pip install -e .` gives the engine and the `posegs` command without ROS 2.
"""

from setuptools import find_packages, setup

PACKAGE = "posegs_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description=(
        "Online monocular pose + 3D Gaussian Splatting reconstruction with a motion-blur "
        "model, as a ROS 2 node and ROS-free tools"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["py.typed"]},
    install_requires=[
        # Any torch >= 2.1 works; CI pins torch==2.13.0 first (a CPU wheel on disk).
        "torch>=2.1",
        "numpy>=1.23",
        "numba>=0.59",
        "opencv-python-headless>=4.8",
        "rosbags>=0.10",
        "evo>=1.28",
        "scikit-image>=0.21",
        "matplotlib>=3.6",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "scipy>=1.10",
    ],
    extras_require={
        "test": ["pytest>=7.0", "pytest-xdist>=3.0"],
        "cuda": ["gsplat>=1.4"],
    },
    entry_points={"console_scripts": ["posegs = posegs_ros.tools.cli:main"]},
    zip_safe=False,
)
