"""``reconstruct_node``: the rclpy glue around :class:`~posegs_ros.ros.worker.ReconstructionWorker`.

The node declares the parameters (:mod:`posegs_ros.ros.params`), creates the topics and services
listed in :mod:`posegs_ros.ros.topics`, and forwards: image / camera_info callbacks enqueue into
the worker (never block), service callbacks wait on the worker's futures (their own reentrant
callback group, so images keep flowing), a steady-clock timer publishes ``~/status`` and
``/diagnostics``. Tracking and mapping run in the worker's thread; the executor never waits
for optimization.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import sys
import traceback
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_ros import TransformBroadcaster

from posegs_ros.srv import SaveMap

from ..config import ConfigError
from ..io import MessageData
from ..pipeline import Reconstructor
from ..warmup import warm_up
from .params import NODE_NAME, parameter_specs, settings_from_parameters
from .rclpy_messages import RclpyMessageFactory, message_class, qos_profile
from .status import DiagnosticsTracker, status_message
from .topics import OUTPUT_QOS, PUBLICATIONS, SUBSCRIPTIONS
from .worker import ReconstructionWorker

__all__ = ["ReconstructNode", "main"]

EXECUTOR_THREADS = 4  # image callbacks, services, status timer never wait for each other


class _RclpySink:
    """The worker's :class:`~posegs_ros.ros.worker.OutputSink`: rclpy publishers, TF, node logger."""

    def __init__(self, node: Node, publishers: dict[str, Any], broadcaster: TransformBroadcaster) -> None:
        self._node = node
        self._publishers = publishers
        self._broadcaster = broadcaster
        self._factory = RclpyMessageFactory()

    def _alive(self) -> bool:
        return self._node.context.ok()  # False once rclpy shut down (SIGINT): outputs are dropped

    def publish(self, key: str, message: MessageData) -> None:
        if self._alive():
            self._publishers[key].publish(self._factory.build(message))

    def send_transforms(self, transforms: list[MessageData]) -> None:
        if self._alive():
            self._broadcaster.sendTransform([self._factory.build(t) for t in transforms])

    def has_subscribers(self, key: str) -> bool:
        try:
            return self._alive() and self._publishers[key].get_subscription_count() > 0
        except Exception:  # the publisher went away with the context
            return False

    def log(self, level: str, text: str) -> None:
        # one call site per severity: rclpy refuses a severity change at the same call site
        logger = self._node.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        elif level == "info":
            logger.info(text)
        else:
            logger.debug(text)


class _EngineLogHandler(logging.Handler):
    """Forwards the engine's Python ``logging`` records to the node's ROS logger."""

    def __init__(self, sink: _RclpySink) -> None:
        super().__init__(logging.INFO)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            level = "error"
        elif record.levelno >= logging.WARNING:
            level = "warning"
        else:
            level = "info"
        try:
            self._sink.log(level, f"[{record.name}] {record.getMessage()}")
        except Exception:  # logging must never raise into the engine
            self.handleError(record)


class ReconstructNode(Node):
    """Online monocular pose + 3DGS reconstruction as a ROS 2 node."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.config, self.settings = settings_from_parameters(self._declare_parameters())
        settings = self.settings
        publishers = {
            endpoint.key: self.create_publisher(
                message_class(endpoint.msgtype), endpoint.name, qos_profile(*OUTPUT_QOS[endpoint.qos])
            )
            for endpoint in PUBLICATIONS
        }
        self.sink = _RclpySink(self, publishers, TransformBroadcaster(self))
        self._log_handler = _EngineLogHandler(self.sink)
        engine_logger = logging.getLogger("posegs_ros")
        engine_logger.addHandler(self._log_handler)
        engine_logger.setLevel(logging.INFO)
        engine_logger.propagate = False  # the ROS logger prints them; no second copy from Python's root
        if settings.warm_up:
            self.get_logger().info("warming up: compiling / loading kernels, exercising the engine once")
            seconds = warm_up(self.config)
            self.get_logger().info(f"warm-up done in {seconds:.1f} s")
        # tracking runs in the worker's thread, mapping in the engine's own thread behind it
        self.worker = ReconstructionWorker(Reconstructor(self.config, concurrent=True), settings, self.sink)

        inputs = MutuallyExclusiveCallbackGroup()
        compressed = settings.image_transport == "compressed"
        image_endpoint, info_endpoint = (
            SUBSCRIPTIONS[1] if compressed else SUBSCRIPTIONS[0], SUBSCRIPTIONS[2]
        )
        image_qos, info_qos = settings.image_qos, settings.camera_info_qos
        self.create_subscription(
            CompressedImage if compressed else Image,
            image_endpoint.name,
            lambda msg: self.worker.on_image(msg, compressed),
            qos_profile(image_qos.reliability, image_qos.durability, image_qos.depth),
            callback_group=inputs,
        )
        self.create_subscription(
            CameraInfo,
            info_endpoint.name,
            self.worker.on_camera_info,
            qos_profile(info_qos.reliability, info_qos.durability, info_qos.depth),
            callback_group=inputs,
        )
        services = ReentrantCallbackGroup()
        self.create_service(SaveMap, "~/save_map", self._on_save_map, callback_group=services)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)
        self._diagnostics = DiagnosticsTracker(
            f"{self.get_name()}: reconstruction", self.get_fully_qualified_name(), settings.stale_after_s
        )
        self.create_timer(
            settings.status_period_s,
            self._on_status_timer,
            callback_group=MutuallyExclusiveCallbackGroup(),
            clock=Clock(clock_type=ClockType.STEADY_TIME),  # runs with use_sim_time and a paused bag too
        )
        self.worker.start()
        self.get_logger().info(
            f"reconstructing from {self.resolve_topic_name(image_endpoint.name)} "
            f"({settings.image_transport}) + {self.resolve_topic_name(info_endpoint.name)}; "
            f"TF {settings.map_frame} -> {settings.camera_frame or '<image frame_id>'}; "
            f"engine on {self.config.render.device}, preset {self.config.preset}, blur sub-frames "
            f"{self.config.blur.subframes or 'auto'}"
        )

    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter: ``preset`` first, then the others with that preset's values
        as defaults (so a parameter file or ``-p`` overrides the preset, the preset the defaults)."""
        values: dict[str, Any] = {}
        specs = parameter_specs()
        preset_spec = next(spec for spec in specs if spec.name == "preset")
        values["preset"] = self._declare(preset_spec)
        for spec in parameter_specs(str(values["preset"])):
            if spec.name != "preset":
                values[spec.name] = self._declare(spec)
        return values

    def _declare(self, spec: Any) -> Any:
        descriptor = ParameterDescriptor(description=spec.description, read_only=True)
        try:
            return self.declare_parameter(spec.name, spec.default, descriptor).value
        except ParameterException as err:
            raise ConfigError(
                f"parameter {spec.name}: {err} (expected a {spec.type.__name__}; floats need a decimal point)"
            ) from err

    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        future = self.worker.request_save(request.path)
        try:
            result = future.result(timeout=self.settings.service_timeout_s)
        except concurrent.futures.TimeoutError:
            cancelled = future.cancel()
            response.success = False
            response.message = (
                f"the engine stayed busy for {self.settings.service_timeout_s} s (ros.service_timeout_s); "
                + ("save cancelled" if cancelled else "the save is still running and will finish")
            )
            return response
        except Exception as err:
            response.success, response.message = False, f"{type(err).__name__}: {err}"
            return response
        response.success = result.success
        response.message = result.message
        response.path = result.path
        response.num_gaussians = int(result.num_gaussians)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        future = self.worker.request_reset()
        try:
            response.message = future.result(timeout=self.settings.service_timeout_s)
            response.success = True
        except concurrent.futures.TimeoutError:
            future.cancel()
            response.success, response.message = False, "the engine stayed busy (ros.service_timeout_s); not reset"
        except Exception as err:
            response.success, response.message = False, f"{type(err).__name__}: {err}"
        return response

    def _on_status_timer(self) -> None:
        snapshot = self.worker.snapshot()
        try:
            self.sink.publish(
                "status", status_message(snapshot, self.settings.map_frame, self.settings.object_frame_prefix)
            )
            self.sink.publish("diagnostics", self._diagnostics.message(snapshot, self.get_clock().now().nanoseconds))
        except Exception as err:  # a timer callback must not take the executor down
            self.get_logger().error(f"status not published: {type(err).__name__}: {err}")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (after its current frame) and save the map if ``ros.save_on_shutdown``."""
        if not self.worker.stop(timeout=timeout):
            self.get_logger().warning(
                f"the engine did not finish its frame within {timeout} s; exiting without waiting"
                + (" (map not saved)" if self.settings.save_on_shutdown else "")
            )
        elif self.settings.save_on_shutdown:
            result = self.worker.save()
            self.sink.log("info" if result.success else "warning", f"save on shutdown: {result.message}")
        engine_logger = logging.getLogger("posegs_ros")
        engine_logger.removeHandler(self._log_handler)
        engine_logger.propagate = True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run posegs_ros reconstruct_node``.

    SIGINT and SIGTERM become a KeyboardInterrupt in the main thread (rclpy's own handlers are
    not installed), so the node stops its worker and saves the map while ROS is still up, then
    shuts ROS down; exit code 0. Invalid parameters exit with 2, other start-up errors with 1.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _interrupt)
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    node: ReconstructNode | None = None
    code = 0
    try:
        node = ReconstructNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as err:
        get_logger(NODE_NAME).fatal(f"invalid parameters: {err}")
        code = 2
    except Exception as err:  # anything else at start-up (e.g. the engine's device): say it, exit non-zero
        get_logger(NODE_NAME).fatal(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        code = 1
    finally:
        # the clean-up below is bounded (worker stop <= 10 s): a second signal must not cut it short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.close()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
