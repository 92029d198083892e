"""posegs replay --realtime: a bag played on a wall clock into the node's worker (concurrent
engine, drop-oldest queue); what is published is recorded and evaluated.

How many frames a machine keeps up with depends on the machine; the tests check what must
hold on any: every image is accounted for, published poses and renders are the engine's, the
outputs are complete and consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posegs_ros.io import read_tum
from posegs_ros.tools.realtime import replay_realtime
from posegs_ros.tools.replay import ReplayError


@pytest.fixture(scope="module")
def synthetic_bag(small_sequence, tmp_path_factory) -> Path:
    from posegs_ros.tools.synth import write

    return write(small_sequence, tmp_path_factory.mktemp("synth_rt") / "seq") / "bag"


def test_realtime_replay_accounts_for_every_image(synthetic_bag, fast_config, small_sequence, tmp_path) -> None:
    out = tmp_path / "live"
    result = replay_realtime(synthetic_bag, out, fast_config, rate=0.5, warm=False)
    live = result.metrics["realtime"]
    n = len(small_sequence.frames)
    assert live["images"] == live["frames_received"] == n
    # every image was tracked, dropped by the queue (the camera was faster than tracking) or skipped
    assert live["frames_tracked"] + live["frames_dropped"] + live["frames_skipped"] == n
    online = read_tum(out / "trajectory_online.tum")
    assert len(online) == live["frames_posed"] > 0 and live["posed_share"] == live["frames_posed"] / n
    frame_stamps = np.array([f.stamp for f in small_sequence.frames])
    assert all(np.abs(frame_stamps - s).min() < 1e-5 for s in online.stamps)  # poses carry their images' stamps
    assert np.all(np.isfinite(online.poses))
    final = read_tum(out / "trajectory.tum")
    assert np.allclose(final.stamps, online.stamps)
    renders = sorted(p.stem for p in (out / "deblurred").glob("*.png"))
    assert len(renders) == live["renders"] > 0
    assert all(0 <= int(r) < n for r in renders)
    lat = live["tracking_latency_ms"]
    assert 0 < lat["median"] <= lat["p95"] <= lat["max"]
    assert live["cpu_cores_used"] > 0 and live["mapping_steps"] >= 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["realtime"]["frames_posed"] == live["frames_posed"]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["trajectory_online"]["matched"] == len(online)
    assert ev["deblurred"]["frames"] == len(renders)


def test_realtime_replay_refuses_a_bad_rate(synthetic_bag, fast_config, tmp_path) -> None:
    with pytest.raises(ReplayError, match="rate"):
        replay_realtime(synthetic_bag, tmp_path / "x", fast_config, rate=0.0, warm=False)
    assert not (tmp_path / "x").exists()


def test_realtime_replay_refuses_a_missing_ground_truth_file_before_playing(synthetic_bag, fast_config,
                                                                            tmp_path) -> None:
    with pytest.raises(ReplayError, match="no such file"):
        replay_realtime(synthetic_bag, tmp_path / "x", fast_config, gt=tmp_path / "gt.tum", warm=False)
    assert not (tmp_path / "x").exists()


def test_renders_of_an_engine_working_smaller_are_recorded_at_the_camera_size(tmp_path) -> None:
    """With ``max_image_width`` the live renders come at the working size; what the recorder writes
    for evaluation against the camera's ground truth is scaled up to the camera's size."""
    import cv2

    from posegs_ros.io.image import rgb_to_image
    from posegs_ros.tools.realtime import RealtimeRecorder

    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, 32:] = (200, 100, 50)
    recorder = RealtimeRecorder(tmp_path, {1000: 7})
    recorder.publish("deblurred", rgb_to_image(rgb, 1000, "camera"))
    assert cv2.imread(str(tmp_path / "0007.png")).shape == (48, 64, 3)  # no camera size known: as published
    recorder.size = (128, 96)
    recorder.publish("deblurred", rgb_to_image(rgb, 1000, "camera"))
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "0007.png")), cv2.COLOR_BGR2RGB)
    assert written.shape == (96, 128, 3)
    assert (written[:, :60] == 0).all() and (written[:, 68:] == (200, 100, 50)).all()
    assert recorder.rendered == [1000, 1000]
