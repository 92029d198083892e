"""Fixtures of the posegs_ros.ros tests (helpers live in ros_support.py)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from ros_support import REPO, FakeClock, Messages, RecordingSink

from posegs_ros.camera import Intrinsics
from posegs_ros.io import TypestoreMessageFactory
from posegs_ros.io.messages import default_typestore
from posegs_ros.ros.interfaces import register_interfaces


@pytest.fixture(scope="session")
def typestore() -> Any:
    """ROS 2 Humble typestore with posegs_ros/msg/* registered (the real message definitions)."""
    store = default_typestore()
    register_interfaces(store, REPO / "msg")
    return store


@pytest.fixture(scope="session")
def factory(typestore: Any) -> TypestoreMessageFactory:
    return TypestoreMessageFactory(typestore)


@pytest.fixture
def intrinsics() -> Intrinsics:
    return Intrinsics(fx=80.0, fy=80.0, cx=40.0, cy=30.0, width=80, height=60)


@pytest.fixture
def messages(factory: TypestoreMessageFactory, intrinsics: Intrinsics) -> Messages:
    return Messages(factory, intrinsics)


@pytest.fixture
def sink_factory(factory: TypestoreMessageFactory) -> Callable[..., RecordingSink]:
    return lambda subscribed=(): RecordingSink(factory, set(subscribed))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
