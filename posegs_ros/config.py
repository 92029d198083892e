"""One configuration tree for the engine, the tools and the ROS node.

Every leaf is a dataclass field with a default and a ``help`` text.  The same tree is:

- loaded from YAML (``config/posegs.yaml`` holds the defaults; user files overlay them),
- flattened to dotted names (``tracking.gn_iterations``) that are the ROS parameters of the
  node, one table for both (see :func:`parameter_table`),
- serialized into ``metrics.json`` so every result records the configuration that made it.

Unknown keys and wrongly typed values are errors (:class:`ConfigError`), never ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

__all__ = [
    "ConfigError",
    "RenderConfig",
    "InitConfig",
    "TrackingConfig",
    "KeyframeConfig",
    "MappingConfig",
    "BlurConfig",
    "DynamicConfig",
    "CalibrationConfig",
    "PosegsConfig",
    "PRESETS",
    "preset_config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "apply_flat",
    "parameter_table",
]


class ConfigError(ValueError):
    """A configuration file or parameter that does not fit the configuration tree."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at the call sites
    return field(default=default, metadata={"help": help})


@dataclass
class RenderConfig:
    """Rasterizer settings."""

    backend: str = _f("auto", "auto | cpu | reference | gsplat: auto = gsplat on CUDA, fast CPU kernels otherwise")
    device: str = _f("cpu", "torch device of the map and optimization (cpu, cuda, cuda:1)")
    sh_degree: int = _f(0, "spherical-harmonics degree of Gaussian colours (0 = view-independent)")
    near_plane: float = _f(0.01, "near clipping distance (map units)")
    far_plane: float = _f(1.0e3, "far clipping distance (map units)")
    eps2d: float = _f(0.3, "low-pass filter added to projected 2D covariances (pixels^2)")
    background: float = _f(0.0, "background grey level in [0, 1]")


@dataclass
class InitConfig:
    """Monocular initialization: two frames, essential matrix, triangulation."""

    min_parallax_px: float = _f(
        12.0, "median translational parallax (flow minus rotation) needed to initialize (pixels): a shorter baseline "
        "leaves the first map's depth bent, and the poses tracked against it drift in rotation")
    min_inliers: int = _f(300, "essential-matrix inliers needed to accept an initialization")
    max_frames: int = _f(30, "frames to wait for parallax before re-selecting the first init frame")
    sharpness_ratio: float = _f(
        0.8, "a frame is one of the two initialization frames only if its sharpness (grey-level gradient energy) is "
        "at least this fraction of the sharpest among the last init.sharpness_window frames: motion blur biases the "
        "two-view flow, rotation and depth, which every later pose inherits (0 = any frame)")
    sharpness_window: int = _f(8, "frames compared by init.sharpness_ratio; also how long after the first "
                               "initialization frame a clearly sharper one (by 1 / sharpness_ratio) replaces it")
    backfill_frames: int = _f(300, "frames that left the initialization buffer and are posed once the map exists "
                              "(tracked backward from the first keyframe); older ones stay without a pose, counted "
                              "(bounds the images held while waiting)")
    baseline: float = _f(0.1, "length given to the first baseline (map units): fixes the arbitrary monocular scale")
    retriangulate_baseline: float = _f(
        1.8, "re-triangulate the first map once a keyframe's baseline to keyframe 0 reaches this multiple of the "
        "initial one: the surface keyframe 0 sees moves along its rays to the depth triangulated between the two "
        "(flow both ways within 1 px; a keyframe whose flow does not come back over half the image, e.g. strongly "
        "blurred, passes the turn to the next). Two-view depth from the short initial baseline is the least "
        "accurate in the map and neither tracking nor the window rounds correct it (0 = off)")
    seed_points: int = _f(8000, "Gaussians seeded from triangulated + interpolated depth")
    mapping_rounds: int = _f(2, "mapping rounds (three stages each) on the two initial keyframes")
    moving_region_px: int = _f(
        150, "smallest region of either initialization frame whose flow no static scene explains (forward-backward "
        "inconsistent, or off its epipolar line) that is left out of the first keyframes' loss as moving (0 = off)")

    def __post_init__(self) -> None:
        if self.retriangulate_baseline < 0:
            raise ConfigError(f"init.retriangulate_baseline must be >= 0, got {self.retriangulate_baseline}")
        if not 0.0 <= self.sharpness_ratio <= 1.0 or self.sharpness_window < 1:
            raise ConfigError(f"init: need 0 <= sharpness_ratio <= 1 and sharpness_window >= 1, got "
                              f"{self.sharpness_ratio}, {self.sharpness_window}")


@dataclass
class TrackingConfig:
    """Per-frame camera tracking (flow lifted to 3D, robust Gauss-Newton, blur-aware refinement)."""

    flow: str = _f("dis", "dense optical flow: dis (OpenCV DIS) | farneback")
    flow_preset: str = _f("balanced", "DIS preset: ultrafast | fast | balanced | medium (balanced: medium with fewer "
                          "gradient-descent and variational iterations, as accurate for tracking and faster)")
    flow_presmooth_px: float = _f(
        0.0, "Gaussian blur (sigma, pixels at full size) of both images before dense flow: DIS matches at half "
        "resolution, where 1-3 px texture aliases, and the sharp render lacks the detail the blurred frame smears; "
        "1 for fine, high-contrast texture (posters, gravel, text: far better poses there), 0 = off (real "
        "7-Scenes frames track slightly worse with it); the least smoothing, tracking.flow_blur_match adds what "
        "a motion-blurred frame needs")
    flow_blur_match: float = _f(
        1.5, "pre-smoothing that follows the frame's blur: both images are blurred before dense flow by this "
        "factor x the Gaussian sigma that makes the render as unsharp as the frame (measured once per frame over "
        "the pixels the map covers; tracking.flow_presmooth_px is the least): a motion-blurred frame's flow and "
        "pose stay accurate, a sharp frame is not smoothed (0 = off)")
    flow_blur_match_max_px: float = _f(3.0, "most pre-smoothing tracking.flow_blur_match may ask for (sigma, pixels "
                                       "at full size)")
    flow_passes: int = _f(2, "at most this many render -> flow -> Gauss-Newton passes per frame (each starts from "
                          "the previous pose)")
    repass_px: float = _f(8.0, "another pass only when the median flow of the previous one exceeded this (pixels): "
                          "large after dropped frames or a jerk, small in steady tracking")
    frame_budget: float = _f(0.9, "live camera (node, --realtime): another pass runs only if it ends within this "
                             "fraction of the camera's frame period after tracking of the frame began -- keep up "
                             "with the camera rather than refine one frame while the next ones drop (offline "
                             "replay: no limit; 0 = no limit)")
    gn_iterations: int = _f(4, "Gauss-Newton iterations on reprojection + photometric residuals")
    huber_px: float = _f(1.5, "Huber threshold of reprojection residuals (pixels)")
    outlier_px: float = _f(
        4.0, "after a first solve, flow samples reprojecting farther than this (pixels; or 3 robust sigmas if more) "
        "are dropped and the pose solved again from the rest when they are over a twentieth of the samples: an "
        "unmodelled moving object is a coherent outlier Huber only down-weights (0 = off)")
    match_brightness: bool = _f(True, "scale the render's grey level to the frame's (ratio of their means over the "
                                "pixels the map covers) before flow: auto-exposure changes do not disturb the flow")
    photometric_weight: float = _f(0.01, "weight of photometric residuals relative to geometric ones")
    sample_stride: int = _f(4, "use every n-th pixel (in x and y) for Gauss-Newton (at full resolution)")
    render_scale: float = _f(1.0, "tracking renders, flows and solves at this fraction of the image size "
                             "(pixel thresholds scale along; < 1 is faster)")
    live_min_scale: float = _f(0.75, "live camera (node, --realtime): while tracking a frame takes longer than "
                               "tracking.frame_budget of the camera period, tracking drops to 3/4 of its "
                               "resolution, down to this fraction (and climbs back with time to spare); "
                               ">= render_scale: fixed")
    refine_steps: int = _f(0, "gradient steps of the blur-aware render loss on pose + exposure twist per frame "
                           "(0 = off: the exposure twist comes from the frame's motion; mapping refines keyframes)")
    refine_lr: float = _f(2.0e-3, "Adam learning rate of the blur-aware pose refinement")
    min_inlier_ratio: float = _f(0.3, "below this fraction of inlier pixels the frame is declared lost")
    max_reprojection_px: float = _f(4.0, "median reprojection error above which the map does not explain the frame: "
                                    "lost, unless the flow is consistent (tracking.mismatch_min_ncc)")
    mismatch_min_ncc: float = _f(0.9, "a frame whose median reprojection error exceeds tracking.max_reprojection_px "
                                 "(up to tracking.lost_reprojection_px) but whose flow matches this well (intensity "
                                 "correlation) is tracked and made a keyframe (live: if mapping has taken the last one): the map's geometry is off, not the "
                                 "pose; > 1 = always lost")
    lost_reprojection_px: float = _f(12.0, "median reprojection error above which tracking is lost whatever the "
                                     "intensity correlation")
    min_ncc: float = _f(0.5, "intensity correlation of render and observation at the flow matches below which tracking is lost")
    max_lost_frames: int = _f(10, "consecutive lost frames (relocalization failing) before re-initializing")
    max_gap_s: float = _f(0.5, "after a gap this long since the last tracked frame the motion is not extrapolated; "
                          "if tracking from the last pose and relocalization fail, the map is re-initialized")

    def __post_init__(self) -> None:
        if not (self.flow_blur_match >= 0 and self.flow_blur_match_max_px >= 0):
            raise ConfigError(f"tracking: need flow_blur_match >= 0 and flow_blur_match_max_px >= 0, got "
                              f"{self.flow_blur_match}, {self.flow_blur_match_max_px}")


@dataclass
class KeyframeConfig:
    """When a frame becomes a keyframe, and the sliding window."""

    window_size: int = _f(6, "keyframes optimized together by mapping")
    min_overlap: float = _f(0.95, "new keyframe when the fraction of pixels covered by the map drops below this")
    max_parallax_px: float = _f(8.0, "new keyframe when the median translational parallax since the last keyframe exceeds this (pixels)")
    max_interval_s: float = _f(1.0, "new keyframe at least this often (seconds)")
    replay_every: int = _f(3, "every n-th mapping round also optimizes one random frozen keyframe")


@dataclass
class MappingConfig:
    """Sliding-window mapping: UPGS's three stages (Gaussians, poses, joint)."""

    gaussian_iters: int = _f(30, "stage 1: Gaussian steps with poses fixed")
    pose_iters: int = _f(10, "stage 2: pose + exposure-twist steps with Gaussians fixed")
    joint_iters: int = _f(15, "stage 3: joint steps")
    lr_means: float = _f(1.6e-4, "Adam learning rate of Gaussian means (times scene scale)")
    window_means_lr_factor: float = _f(1.0, "online window rounds move Gaussian means at this factor of lr_means "
                                            "(the final refinement at final_means_lr_factor)")
    lr_colors: float = _f(5.0e-3, "Adam learning rate of colours")
    lr_opacity: float = _f(5.0e-2, "Adam learning rate of opacity logits")
    lr_scales: float = _f(5.0e-3, "Adam learning rate of log-scales")
    lr_quats: float = _f(1.0e-3, "Adam learning rate of rotations")
    lr_pose: float = _f(1.0e-3, "Adam learning rate of keyframe pose corrections")
    lr_exposure: float = _f(1.0e-3, "Adam learning rate of exposure twists")
    affine_exposure: bool = _f(True, "optimize each keyframe's affine exposure (log gain, bias) with its pose, so a "
                               "camera's auto-exposure does not become geometry or colour")
    lr_affine: float = _f(5.0e-3, "Adam learning rate of the affine exposures")
    ssim_weight: float = _f(0.2, "lambda in (1 - lambda) L1 + lambda (1 - SSIM)")
    gradient_weight: float = _f(0.5, "mu: weight of the L1 of the residual's horizontal and vertical finite differences "
                                "added to the mapping loss (0 = off): the error's fine detail, which the gradient through a "
                                "blurred view attenuates, converges sooner (README, Suite)")
    densify_alpha: float = _f(0.5, "add Gaussians where the rendered opacity is below this")
    densify_error: float = _f(0.15, "add Gaussians where the L1 error is above this")
    densify_stride: int = _f(4, "sample every n-th pixel when densifying")
    prune_opacity: float = _f(0.01, "remove Gaussians whose opacity falls below this")
    prune_scale: float = _f(0.5, "remove Gaussians larger than this fraction of the scene extent")
    defer_new_content: bool = _f(False, "densifying a new keyframe: use the depth triangulated from the flow to the previous "
                                 "keyframe only where that flow comes back within 1 px, and borrow the nearest rendered depth only "
                                 "within 2 sampling strides of the map; other new content waits for the next keyframe (mixed on real "
                                 "frames: README, Real camera data)")
    max_gaussians: int = _f(40000, "cap on the number of Gaussians (memory and time per mapping step)")
    final_max_gaussians: int = _f(0, "offline only: cap on the number of Gaussians during the final refinement (0 = "
                                  "max_gaussians): the refinement may grow the map past the online cap, whose per-frame cost "
                                  "(the node, --realtime) it does not change (60000: +0.1-0.5 dB on synthetic sequences, "
                                  "-0.03 to -0.3 dB on real frames; README, Presets)")
    final_iters: int = _f(1600, "offline only (posegs replay): at most this many joint steps over the tracked frames after "
                          "the last one (0 = no final refinement)")
    final_steps_per_view: int = _f(16, "offline only: joint steps of the final refinement per tracked frame (so its cost "
                                   "follows the sequence's length up to final_iters; 0 = final_iters steps), spread over "
                                   "the final_max_views frames it refines (16 instead of 8: +1.0 to +1.5 dB on 60-frame "
                                   "sequences; from 100 frames on final_iters caps it)")
    final_budget_subframes: int = _f(3, "offline only: final_iters and final_steps_per_view count steps that render "
                                     "this many sub-frames; views that render fewer (a sharp camera: 1) take more steps "
                                     "for the same cost, up to (0.5 + this) / (0.5 + their mean) times as many (a step "
                                     "costs about half a sub-frame more than its renders); 0 = steps as counted")
    final_rounds: int = _f(1, "offline only: alternations of joint refinement and flow-based re-tracking of every frame")
    final_lr_factor: float = _f(0.02, "offline only: position and pose learning rates decay to this factor over the final refinement")
    final_lr_boost: float = _f(3.0, "offline only: colour, opacity, scale and rotation learning rates of the final refinement "
                               "start at this multiple of their online value and decay exponentially back to it (1 = no boost)")
    final_means_lr_factor: float = _f(3.0, "offline only: the final refinement moves Gaussian means at this factor of "
                                      "lr_means, decaying with final_lr_factor (3 instead of 1: +0.1 to +0.7 dB on every "
                                      "sequence measured, fine texture most; README, Suite)")
    final_densify_error: float = _f(0.05, "offline only: densify_error of the final refinement (finer detail than online)")
    final_densify_stride: int = _f(2, "offline only: densify_stride of the final refinement")
    final_grow_grad: float = _f(0.3, "offline only: split (footprint over 1 px) or clone every Gaussian whose view-space "
                                "positional gradient exceeds this -- the image's summed per-pixel loss per pixel of motion of "
                                "its centre, mean over the steps that saw it (3DGS's adaptive density control), strongest "
                                "first up to max_gaussians; 0 = off")
    final_grow_interval: int = _f(50, "offline only: steps of the final refinement between two growths (final_grow_grad), "
                                  "in its first 60 %")
    final_photometric_weight: float = _f(0.1, "offline only: tracking.photometric_weight of the flow-based re-tracking "
                                         "against the refined map (its renders match the frames closely: their "
                                         "intensities earn more weight than online)")
    final_max_views: int = _f(100, "offline only: at most this many frames (evenly spaced) join the final refinement; "
                              "the others are tracked against the refined map after it")
    optimize_poses: bool = _f(True, "refine keyframe poses in mapping (false = two-step: tracking poses stay fixed)")
    idle_rounds: int = _f(2, "concurrent mapping (node, --realtime): window rounds run after the last keyframe "
                          "while no new one arrives, then the mapping thread sleeps")
    thread_nice: int = _f(5, "concurrent mapping: niceness added to the mapping thread so per-frame tracking "
                          "wins the CPU (Linux; 0 = same priority)")

    def __post_init__(self) -> None:
        if not self.window_means_lr_factor >= 0:
            raise ConfigError(f"mapping.window_means_lr_factor must be >= 0, got {self.window_means_lr_factor}")
        if not self.final_means_lr_factor >= 0:
            raise ConfigError(f"mapping.final_means_lr_factor must be >= 0, got {self.final_means_lr_factor}")
        if not self.final_photometric_weight >= 0:
            raise ConfigError(f"mapping.final_photometric_weight must be >= 0, got {self.final_photometric_weight}")
        if self.final_max_gaussians < 0:
            raise ConfigError(f"mapping.final_max_gaussians must be >= 0 (0 = max_gaussians), got {self.final_max_gaussians}")
        if self.final_budget_subframes < 0:
            raise ConfigError(f"mapping.final_budget_subframes must be >= 0 (0 = steps as counted), got "
                              f"{self.final_budget_subframes}")


@dataclass
class BlurConfig:
    """Exposure motion-blur model: mean of sharp renders along T exp(s d), s in [-1/2, 1/2]."""

    enabled: bool = _f(True, "model motion blur (off: one sharp render per frame)")
    subframes: int = _f(0, "S sharp renders averaged per blurred frame: 0 = from each frame's blur length (its "
                        "exposure twist), at most subframe_spacing_px apart; > 0 = that many for every frame (UPGS: 7)")
    subframe_spacing_px: float = _f(2.0, "automatic sub-frames: the largest gap (pixels) between sub-frame renders along "
                                    "the blur streak (a sparser sampling leaves ghosts)")
    max_subframes: int = _f(9, "automatic sub-frames: at most this many per frame (the cost of a mapping step grows with it)")
    exposure_ratio: float = _f(0.5, "exposure time / frame interval (seeds the exposure twists): the guess until "
                               "exposure_pairs measure it, for good with exposure_pairs 0")
    exposure_pairs: int = _f(40, "pairs of consecutive tracked frames whose blur measures the exposure time (each "
                             "frame smeared along the other's motion must match the other smeared along its own); "
                             "0 = keep exposure_ratio")
    final_twist_fit: bool = _f(True, "offline (finalize): before the final refinement, each frame's exposure twist is "
                               "re-estimated from its neighbours' poses (velocity at mid-exposure from a cubic in time "
                               "through two frames on each side) instead of tracking's backward difference")
    final_bend: bool = _f(True, "offline (with final_twist_fit): the exposure path also bends with the camera's "
                          "acceleration (second-order term of the same cubic): a straight path through a streak the "
                          "hand turns within puts the sharp render at the streak's centroid, not at mid-exposure "
                          "(the suite's stronger blur +3.0 dB, other sequences +0.6-0.7 dB; README, Suite)")
    final_precondition: float = _f(0.1, "offline: the final refinement filters the gradient that reaches a blurred view's "
                                   "render by (1 + eps) / (|H|^2 + eps), H the frequency response of the view's streak: "
                                   "the detail a streak attenuates, which the map otherwise learns slowest, converges as "
                                   "fast as the rest (a sharp view, one sub-frame, is untouched; eps; 0 = off; README, Suite)")
    final_precondition_tiles: int = _f(3, "with final_precondition: the image is split into this many tiles per side, "
                                       "each filtered for the streak at its centre (rotation about the optical axis and "
                                       "depth make streaks differ across the image), the results blended bilinearly")
    live_output: str = _f("fused", "deblurred image of a live frame (node ~/deblurred, --realtime): render = the map's "
                          "sharp render | fused = render + what the map does not explain of the frame, R + (I - B(R)) "
                          "(never worse than the camera where the map is young or empty)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.exposure_ratio <= 1.0 or self.exposure_pairs < 0:
            raise ConfigError(f"blur: need 0 <= exposure_ratio <= 1 and exposure_pairs >= 0, got "
                              f"{self.exposure_ratio}, {self.exposure_pairs}")
        if self.subframes < 0 or self.max_subframes < 1 or not self.subframe_spacing_px > 0:
            raise ConfigError(f"blur: need subframes >= 0 (0 = automatic), max_subframes >= 1 and "
                              f"subframe_spacing_px > 0, got {self.subframes}, {self.max_subframes}, "
                              f"{self.subframe_spacing_px}")
        if not self.final_precondition >= 0 or self.final_precondition_tiles < 1:
            raise ConfigError(f"blur: need final_precondition >= 0 (0 = off) and final_precondition_tiles >= 1, got "
                              f"{self.final_precondition}, {self.final_precondition_tiles}")


@dataclass
class DynamicConfig:
    """Moving objects as motion groups with their own SE(3) per frame."""

    enabled: bool = _f(False, "detect moving objects and give them their own motion groups")
    flow_threshold_px: float = _f(1.5, "flow disagreement with the camera-induced flow marking a pixel dynamic (pixels)")
    depth_slack: float = _f(
        2.0, "factor by which the map's depth may be off before a pixel's flow counts as motion: a static surface "
        "mapped too near or too far moves along its epipolar line, within this factor of its rendered depth")
    min_boundary_contrast: float = _f(
        3.0, "a new region spawns a group only if its flow residual is this many times the residual just outside "
        "it (a separate moving body; a wrong camera pose or rolling shutter leaves a smooth residual field)")
    max_residual_change: float = _f(
        0.4, "a new region spawns a group only if its median flow residual (a 2-vector) changed by at most this "
        "fraction between consecutive frames over its last residual_frames frames: a moving body's residual is "
        "steady, what camera shake, strong blur or a wrong map leave flips from frame to frame (inf = off)")
    residual_frames: int = _f(4, "frames of a region's residual history max_residual_change looks at (at least 2)")
    min_region_px: int = _f(150, "smallest connected region that spawns or extends a motion group")
    persistence: int = _f(2, "frames a region must persist before it becomes a group")
    merge_motion: float = _f(0.005, "groups moving less than this per frame (translation / scene depth + radians) merge back")
    merge_frames: int = _f(5, "frames a group must stay below merge_motion before it merges back")
    max_groups: int = _f(4, "cap on simultaneous motion groups")
    spawn_depth_ratio: float = _f(
        0.6, "a new group's depth as a fraction of the background depth around its region (monocular: an object's "
        "depth and its motion are known only together; any depth in front of the background renders alike)")
    track_groups: bool = _f(True, "track each group against its own Gaussians (rendered depth + flow) instead of "
                            "frame-to-frame region flow, once it has them")
    min_group_inliers: float = _f(0.5, "inlier ratio below which a group's tracking result is not trusted")

    def __post_init__(self) -> None:
        if not self.max_residual_change >= 0 or self.residual_frames < 2:
            raise ConfigError(f"dynamic: need max_residual_change >= 0 and residual_frames >= 2, got "
                              f"{self.max_residual_change}, {self.residual_frames}")


@dataclass
class CalibrationConfig:
    """Focal-length self-calibration from the first seconds of tracking (posegs_ros.tracking.calibration)."""

    focal: str = _f("auto", "auto = once calibration.frames frames are posed, estimate the focal length by bundle "
                    "adjustment over point tracks started from the online poses; an estimate that differs from "
                    "camera_info by min_change or more restarts the map with it (those frames tracked again) | "
                    "fixed = camera_info as given")
    frames: int = _f(90, "posed frames the estimate waits for (3 s at 30 Hz: enough hand-held rotation); their images "
                     "are held until then (at most 2 x frames: fewer posed by then = no estimate)")
    view_step: int = _f(1, "every this many of those frames take part in the adjustment")
    max_points: int = _f(400, "point tracks in the adjustment (the longest)")
    min_change: float = _f(0.05, "relative focal change below which camera_info stays (estimates on synthetic sequences "
                           "with the true focal stay within 3 %)")
    max_change: float = _f(0.3, "relative focal change above which the estimate is not trusted")
    max_sigma: float = _f(0.02, "largest standard deviation of the estimated focal scale that is trusted")

    def __post_init__(self) -> None:
        if self.focal not in ("auto", "fixed"):
            raise ConfigError(f"calibration.focal must be auto or fixed, got {self.focal!r}")
        if self.frames < 12 or self.view_step < 1 or not 0 <= self.min_change <= self.max_change:
            raise ConfigError(f"calibration: need frames >= 12, view_step >= 1 and 0 <= min_change <= max_change, "
                              f"got {self.frames}, {self.view_step}, {self.min_change}, {self.max_change}")


@dataclass
class PosegsConfig:
    """The whole configuration."""

    preset: str = _f("balanced", "named speed / quality trade-off (fast | balanced | best), applied under every "
                     "setting given explicitly (README, Presets)")
    seed: int = _f(0, "random seed (runs are deterministic on CPU given the seed)")
    threads: int = _f(0, "CPU threads the engine keeps busy (0 = all cores; concurrent mode: one tracks, the rest map)")
    max_image_width: int = _f(0, "frames wider than this (pixels) are scaled down to it (area filter, aspect kept, "
                              "intrinsics scaled to match) before the engine sees them: tracking, mapping and the "
                              "live outputs (~/deblurred, ~/depth) run at that size, posegs replay's deblurred/ come "
                              "at the camera's; 0 = as given (a 640x480 camera at 320: a quarter of the pixels)")
    render: RenderConfig = field(default_factory=RenderConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if self.max_image_width != 0 and self.max_image_width < 32:
            raise ConfigError(f"max_image_width must be 0 (as given) or at least 32 pixels, got {self.max_image_width}")


# name -> settings it changes (dotted names); every other setting keeps its default. "balanced"
# is the defaults themselves. README, "Presets", has the measured speed and quality of each.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "mapping.final_steps_per_view": 3,
        "mapping.final_iters": 600,
        "mapping.final_max_views": 150,
        "mapping.gaussian_iters": 20,
        "mapping.joint_iters": 10,
        "blur.max_subframes": 5,
    },
    "balanced": {},
    "best": {
        "mapping.final_steps_per_view": 20,
        "mapping.final_iters": 8000,
        "mapping.final_max_views": 400,
        "mapping.final_rounds": 3,
        "mapping.max_gaussians": 80000,
        "blur.subframe_spacing_px": 1.0,
        "blur.max_subframes": 11,
    },
}


def preset_config(name: str) -> PosegsConfig:
    """The defaults with preset ``name`` applied (its ``preset`` field set to ``name``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return apply_flat(PosegsConfig(), {**PRESETS[name], "preset": name})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, name: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads an exponent without a dot (1e-2) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {typ}")


def config_from_dict(data: Mapping[str, Any], cls: type = PosegsConfig, prefix: str = "") -> Any:
    """Build ``cls`` from nested mappings; missing keys keep their defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"unknown config key(s) at {where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        typ = types[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = config_from_dict(value or {}, typ, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, typ, f"{prefix}{key}")
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form of a config dataclass (YAML / JSON ready)."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    *paths: str | Path,
    overrides: Mapping[str, Any] | None = None,
    preset_overlays: Mapping[str, Mapping[str, Any]] | None = None,
) -> PosegsConfig:
    """Defaults, the preset, ``preset_overlays[preset]`` (dotted names: a command's own settings
    for that preset), each YAML file in order, then dotted ``overrides``.

    The preset (``preset`` in ``overrides``, else the last file that names one, else
    "balanced") is applied first, so every setting given explicitly wins over it. A YAML file
    may hold the tree at top level or under ``posegs_node: ros__parameters:`` (the ROS 2
    parameter-file layout), so ``config/posegs.yaml`` serves both.
    """
    layers = []
    for path in paths:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise ConfigError(f"cannot read config file {p}: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from err
        layers.append(_unwrap_ros_parameters(loaded, p))
    preset = PosegsConfig.preset
    for layer in layers:
        preset = layer.get("preset", preset)
    preset = (overrides or {}).get("preset", preset)
    if not isinstance(preset, str):
        raise ConfigError(f"preset: expected a name, got {preset!r}")
    overlay = (preset_overlays or {}).get(preset, {})
    data: dict[str, Any] = config_to_dict(apply_flat(preset_config(preset), overlay))
    for layer in layers:
        data = _merge(data, layer)
    data["preset"] = preset
    cfg = config_from_dict(data)
    if overrides:
        cfg = apply_flat(cfg, {k: v for k, v in overrides.items() if k != "preset"})
    return cfg


ROS_ONLY_KEYS = ("ros", "use_sim_time")  # node-level parameters that are not engine config


def _unwrap_ros_parameters(loaded: Any, path: Path) -> Mapping[str, Any]:
    """The engine part of a config file: the file itself, or, for a ROS 2 parameter file
    (``<node>: {ros__parameters: {...}}``), its parameters minus the node-only keys."""
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping at top level")
    if len(loaded) == 1:
        (only,) = loaded.values()
        if isinstance(only, Mapping) and "ros__parameters" in only:
            params = only["ros__parameters"] or {}
            if not isinstance(params, Mapping):
                raise ConfigError(f"config file {path}: ros__parameters must be a mapping")
            return {k: v for k, v in params.items() if k not in ROS_ONLY_KEYS}
    return loaded


def _walk(cfg: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def flatten(cfg: Any) -> dict[str, Any]:
    """Dotted-name view ``{"tracking.gn_iterations": 8, ...}`` of a config."""
    return {name: value for name, _, value in _walk(cfg)}


def apply_flat(cfg: PosegsConfig, values: Mapping[str, Any]) -> PosegsConfig:
    """A copy of ``cfg`` with dotted-name values applied (type-checked)."""
    data = config_to_dict(cfg)
    known = flatten(cfg)
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown config parameter {name!r}")
        node = data
        *parents, leaf = name.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config_from_dict(data)


def parameter_table(cfg: PosegsConfig | None = None) -> list[tuple[str, Any, str]]:
    """``(dotted name, default, description)`` for every leaf: the ROS parameter table."""
    return [(name, value, f.metadata.get("help", "")) for name, f, value in _walk(cfg or PosegsConfig())]
