"""A procedural textured room and an exact ray caster for it (numba), independent of the Gaussian rasterizer.

The scene is a set of textured rectangles ("quads"): the six walls of a room (seen from inside)
and a few boxes (seen from outside); optional moving boxes each follow their own trajectory
("bodies" 1, 2, ...).
Textures are photographs shipped inside scikit-image's installed data folder (read from disk,
no download).  Rendering casts one ray per sub-pixel sample (``supersample`` x ``supersample``
per pixel), intersects it exactly with every front-facing quad, and reads the texture with
trilinear mip-mapping (level from the sample's footprint on the surface), so frames are neither
aliased nor shimmering.  Depth and the body id come from the ray through the pixel centre.

World frame: z up.  Poses are camera-to-world ``[4, 4]`` in the optical convention (x right,
y down, z forward), objects object-to-world.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numba
import numpy as np

from ..camera import Intrinsics

__all__ = [
    "TEXTURE_FILES",
    "PROCEDURAL_TEXTURES",
    "TEXTURE_DETAILS",
    "OBJECT_TEXTURES",
    "procedural_texture",
    "TextureAtlas",
    "Quads",
    "Scene",
    "RenderOutput",
    "build_scene",
    "box_quads",
    "look_at",
]

TEXTURE_SIZE = 512  # every texture is resampled to this square size (then mip-mapped)
NEAR = 0.05  # metres
STATIC_BODY = 0
DYNAMIC_BODY = 1  # the first moving box; the k-th (0-based) is body 1 + k
# textures of the moving boxes, in order (the first is the one of the single-object sequences)
OBJECT_TEXTURES = ("chelsea", "coins", "retina")

# name -> (file in skimage's data folder, RGB tint applied to grey images)
TEXTURE_FILES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "motorcycle": ("motorcycle_left.png", (1.0, 1.0, 1.0)),
    "brick": ("brick.png", (1.0, 0.62, 0.45)),
    "ihc": ("ihc.png", (1.0, 1.0, 1.0)),
    "gravel": ("gravel.png", (0.85, 0.8, 0.7)),
    "grass": ("grass.png", (0.7, 0.85, 0.65)),
    "cameraman": ("camera.png", (0.75, 0.8, 1.0)),
    "astronaut": ("astronaut.png", (1.0, 1.0, 1.0)),
    "coffee": ("coffee.png", (1.0, 1.0, 1.0)),
    "rocket": ("rocket.jpg", (1.0, 1.0, 1.0)),
    "chelsea": ("chelsea.png", (1.0, 1.0, 1.0)),
    "coins": ("coins.png", (1.0, 0.82, 0.5)),
    "retina": ("retina.jpg", (1.0, 1.0, 1.0)),
}


# procedural textures with detail at the scale of a pixel or two in the benchmark views
# (fine-texture scenes: printed text, high-contrast noise, thin stripes); made, never downloaded
PROCEDURAL_TEXTURES = ("fine_text", "fine_noise", "fine_stripes")
TEXTURE_DETAILS = ("default", "fine")


def procedural_texture(name: str, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Procedural texture ``name`` of :data:`PROCEDURAL_TEXTURES` as RGB ``[size, size, 3]``
    float32 in [0, 1] (deterministic: a fixed seed per name)."""
    rng = np.random.default_rng(PROCEDURAL_TEXTURES.index(name) + 101)
    if name == "fine_text":  # dark print on paper: letters, digits and signs in lines
        img = np.full((size, size, 3), (237, 230, 209), np.uint8)
        glyphs = "ABCDEFGHKLMNPRSTUVWXYZ0123456789#%&@+=?"
        line = size // 12
        for row in range(12):
            x = int(rng.integers(0, line // 2))
            while x < size - line // 2:
                char = glyphs[int(rng.integers(len(glyphs)))]
                colour = tuple(int(c) for c in rng.integers(0, 64, 3))
                cv2.putText(img, char, (x, (row + 1) * line - line // 5), cv2.FONT_HERSHEY_SIMPLEX,
                            line / 38.0, colour, 2, cv2.LINE_AA)
                x += int(line * rng.uniform(0.55, 0.8))
        return img.astype(np.float32) / 255.0
    if name == "fine_noise":  # two-colour random blocks
        cells = rng.random((size // 32, size // 32)) < 0.5
        blocks = cv2.resize(cells.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
        return np.where(blocks[..., None], np.float32([0.12, 0.16, 0.35]), np.float32([0.95, 0.88, 0.7]))
    if name == "fine_stripes":  # patches of thin stripes at random angles and periods
        img = np.zeros((size, size, 3), np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        patch = size // 4
        for py in range(4):
            for px in range(4):
                angle, period = rng.uniform(0, np.pi), rng.uniform(24.0, 64.0)
                phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
                stripes = (np.sin(phase) > 0).astype(np.float32)
                lo, hi = rng.uniform(0.0, 0.25, 3), rng.uniform(0.75, 1.0, 3)
                sl = (slice(py * patch, (py + 1) * patch), slice(px * patch, (px + 1) * patch))
                img[sl] = (lo + (hi - lo) * stripes[..., None])[sl]
        return img
    raise KeyError(name)


def _skimage_data_dir() -> Path:
    return Path(str(importlib.resources.files("skimage") / "data"))


def load_texture(name: str, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Texture ``name`` (of :data:`TEXTURE_FILES` or :data:`PROCEDURAL_TEXTURES`) as RGB
    ``[size, size, 3] float32`` in [0, 1]."""
    if name in PROCEDURAL_TEXTURES:
        return procedural_texture(name, size)
    filename, tint = TEXTURE_FILES[name]
    path = _skimage_data_dir() / filename
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"texture {name!r}: cannot read {path} (is scikit-image installed?)")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(rgb * np.asarray(tint, dtype=np.float32), 0.0, 1.0)


@dataclass
class TextureAtlas:
    """Mip pyramids of square textures packed into one buffer for the ray caster."""

    names: list[str]
    data: np.ndarray  # [M] uint32 0x00RRGGBB: all levels of all textures, row-major (cache friendly)
    level_base: np.ndarray  # [L] int64: start of level l (textures of a level are consecutive)
    size: int  # side of level 0

    @classmethod
    def from_images(cls, names: list[str], images: list[np.ndarray]) -> TextureAtlas:
        """Atlas of square ``[S, S, 3]`` float32 images (S a power of two)."""
        size = images[0].shape[0]
        levels = int(np.log2(size)) + 1
        chunks, bases, offset = [], [], 0
        pyramid = [np.asarray(im, np.float32) for im in images]
        for level in range(levels):
            bases.append(offset)
            for im in pyramid:
                chunks.append(im.reshape(-1, 3))
                offset += im.shape[0] * im.shape[1]
            if level + 1 < levels:
                pyramid = [im.reshape(im.shape[0] // 2, 2, im.shape[1] // 2, 2, 3).mean(axis=(1, 3)) for im in pyramid]
        rgb = np.clip(np.round(np.concatenate(chunks) * 255.0), 0, 255).astype(np.uint32)
        packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
        return cls(list(names), np.ascontiguousarray(packed), np.array(bases, np.int64), size)

    @classmethod
    def load(cls, names: list[str], size: int = TEXTURE_SIZE) -> TextureAtlas:
        """Atlas of :data:`TEXTURE_FILES` entries (cached per process: atlases are read-only)."""
        return _cached_atlas(tuple(names), size)

    def index(self, name: str) -> int:
        return self.names.index(name)


@dataclass
class Quads:
    """Textured rectangles ``origin + a * edge_u + b * edge_v``, ``a, b`` in [0, 1].

    Like an image seen by a camera, ``edge_u`` runs right and ``edge_v`` down for a viewer who
    looks along ``cross(edge_u, edge_v)``: that side is visible, the other is culled.  Texture
    columns run along ``edge_u``, rows along ``edge_v``; a tile spans ``tile_u`` x ``tile_v`` metres.
    """

    origin: np.ndarray  # [Q, 3]
    edge_u: np.ndarray  # [Q, 3]
    edge_v: np.ndarray  # [Q, 3]
    texture: np.ndarray  # [Q] int64 atlas index
    tile_u: np.ndarray  # [Q] metres per texture repeat along edge_u
    tile_v: np.ndarray  # [Q]
    body: np.ndarray  # [Q] int64: 0 static (world frame), 1 dynamic (object frame)

    @classmethod
    def concat(cls, parts: list[Quads]) -> Quads:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.origin.shape[0])


@functools.lru_cache(maxsize=4)
def _cached_atlas(names: tuple[str, ...], size: int) -> TextureAtlas:
    return TextureAtlas.from_images(list(names), [load_texture(n, size) for n in names])


def _quads(rects: list[tuple[np.ndarray, np.ndarray, np.ndarray]], texture: int, tile: tuple[float, float],
           body: int) -> Quads:
    n = len(rects)
    return Quads(
        np.array([r[0] for r in rects], np.float64), np.array([r[1] for r in rects], np.float64),
        np.array([r[2] for r in rects], np.float64), np.full(n, texture, np.int64),
        np.full(n, tile[0], np.float64), np.full(n, tile[1], np.float64), np.full(n, body, np.int64),
    )


def box_quads(lo: np.ndarray, hi: np.ndarray, texture: int, tile: tuple[float, float], body: int = 0,
              inside: bool = False) -> Quads:
    """Six faces of the axis-aligned box ``[lo, hi]``, visible from outside (or from inside).

    Order: -y, +y, -x, +x, top, bottom.  On vertical faces texture rows run down (-z), so
    photographs stand upright and unmirrored for the viewer.
    """
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    p = lambda x, y, z: np.array([x, y, z], np.float64)  # noqa: E731
    # (top-left corner, right, down) as seen from outside: cross(right, down) points into the box
    rects = [
        (p(x0, y0, z1), p(x1 - x0, 0, 0), p(0, 0, z0 - z1)),  # -y face
        (p(x1, y1, z1), p(x0 - x1, 0, 0), p(0, 0, z0 - z1)),  # +y face
        (p(x0, y1, z1), p(0, y0 - y1, 0), p(0, 0, z0 - z1)),  # -x face
        (p(x1, y0, z1), p(0, y1 - y0, 0), p(0, 0, z0 - z1)),  # +x face
        (p(x0, y1, z1), p(x1 - x0, 0, 0), p(0, y0 - y1, 0)),  # +z face (top)
        (p(x0, y0, z0), p(x1 - x0, 0, 0), p(0, y1 - y0, 0)),  # -z face (bottom)
    ]
    if inside:  # seen from inside: mirror the right edge, which flips the visible side
        rects = [(o + u, -u, v) for o, u, v in rects]
    return _quads(rects, texture, tile, body)


def look_at(position: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (optical axes) at ``position`` looking at ``target``, ``up`` up."""
    up = np.asarray(up, np.float64)
    forward = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


@dataclass
class RenderOutput:
    """One sharp render."""

    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1], supersampled
    depth: np.ndarray | None  # [H, W] float32 z-depth (metres) at pixel centres
    body: np.ndarray | None  # [H, W] int32 body id at pixel centres (-1: nothing hit)


@dataclass
class Scene:
    """Quads + textures; :meth:`render` draws it from any camera pose."""

    quads: Quads
    atlas: TextureAtlas
    description: dict = field(default_factory=dict)
    background: float = 0.5

    @property
    def has_dynamic(self) -> bool:
        return bool(np.any(self.quads.body >= DYNAMIC_BODY))

    @property
    def n_objects(self) -> int:
        """Number of moving boxes (bodies ``1 .. n_objects``)."""
        return int(self.quads.body.max(initial=STATIC_BODY))

    def quads_in_camera(self, camera_pose: np.ndarray, object_pose: np.ndarray | None) -> Quads:
        """The quads in the camera frame, those facing away from the camera removed.

        ``object_pose``: object-to-world ``[4, 4]`` of the single moving box or ``[K, 4, 4]``, one
        per moving box (body ``1 + k``); None if the scene has none.
        """
        world_to_cam = np.linalg.inv(np.asarray(camera_pose, np.float64))
        transforms = {STATIC_BODY: world_to_cam}
        if self.has_dynamic:
            if object_pose is None:
                raise ValueError("the scene has a moving object: pass its object_pose")
            poses = np.asarray(object_pose, np.float64).reshape(-1, 4, 4)
            if len(poses) != self.n_objects:
                raise ValueError(f"the scene has {self.n_objects} moving objects, got {len(poses)} object_pose(s)")
            for k, pose in enumerate(poses):
                transforms[DYNAMIC_BODY + k] = world_to_cam @ pose
        q = self.quads
        origin, edge_u, edge_v = np.empty_like(q.origin), np.empty_like(q.edge_u), np.empty_like(q.edge_v)
        for body, t in transforms.items():
            sel = q.body == body
            origin[sel] = q.origin[sel] @ t[:3, :3].T + t[:3, 3]
            edge_u[sel] = q.edge_u[sel] @ t[:3, :3].T
            edge_v[sel] = q.edge_v[sel] @ t[:3, :3].T
        normal = np.cross(edge_u, edge_v)
        front = np.einsum("qi,qi->q", normal, origin) > 0  # the camera looks along the normal
        return Quads(origin[front], edge_u[front], edge_v[front], q.texture[front], q.tile_u[front],
                     q.tile_v[front], q.body[front])

    def render(
        self,
        intrinsics: Intrinsics,
        camera_pose: np.ndarray,
        object_pose: np.ndarray | None = None,
        supersample: int = 2,
        with_depth: bool = False,
    ) -> RenderOutput:
        """Render RGB (and optionally depth + body ids) from camera-to-world ``camera_pose`` ``[4, 4]``.

        ``object_pose``: ``[4, 4]`` or ``[K, 4, 4]`` object-to-world of the moving boxes (if any).
        """
        q = self.quads_in_camera(camera_pose, object_pose)
        bounds, on_screen = _screen_bounds(q, intrinsics)
        q = Quads(q.origin[on_screen], q.edge_u[on_screen], q.edge_v[on_screen], q.texture[on_screen],
                  q.tile_u[on_screen], q.tile_v[on_screen], q.body[on_screen])
        bounds = np.ascontiguousarray(bounds[on_screen])
        normal = np.cross(q.edge_u, q.edge_v)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        inv_uu = 1.0 / np.einsum("qi,qi->q", q.edge_u, q.edge_u)
        inv_vv = 1.0 / np.einsum("qi,qi->q", q.edge_v, q.edge_v)
        n_dot_o = np.einsum("qi,qi->q", normal, q.origin)
        # texels (level 0) per unit of a and b, and per metre of surface (for the mip level)
        len_u = np.sqrt(1.0 / inv_uu)
        len_v = np.sqrt(1.0 / inv_vv)
        size = self.atlas.size
        scale_a = len_u / q.tile_u * size
        scale_b = len_v / q.tile_v * size
        density = np.sqrt((size / q.tile_u) * (size / q.tile_v))
        h, w = intrinsics.height, intrinsics.width
        rgb = np.empty((h, w, 3), np.float32)
        depth = np.full((h, w), np.nan, np.float32)
        body = np.full((h, w), -1, np.int32)
        _render_kernel(
            w, h, int(supersample), intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
            np.ascontiguousarray(q.origin), np.ascontiguousarray(q.edge_u), np.ascontiguousarray(q.edge_v),
            np.ascontiguousarray(normal), n_dot_o, inv_uu, inv_vv, bounds, q.texture, scale_a, scale_b, density,
            q.body,
            self.atlas.data, self.atlas.level_base, size, float(self.background),
            bool(with_depth), rgb, depth, body,
        )
        return RenderOutput(rgb, depth if with_depth else None, body if with_depth else None)


@numba.njit(cache=True, fastmath=True, inline="always")
def _bilinear(data, base, tex, side, x, y, out):  # pragma: no cover - compiled
    """Wrapped bilinear value (0-255 floats) at texel coordinates (x, y) of one mip level -> out."""
    start = base + tex * side * side
    mask = side - 1  # side is a power of two: & wraps negative indices too
    fx = x - 0.5
    fy = y - 0.5
    x0f = np.floor(fx)
    y0f = np.floor(fy)
    wx = fx - x0f
    wy = fy - y0f
    x0 = int(x0f) & mask
    y0 = int(y0f) & mask
    x1 = (x0 + 1) & mask
    y1 = (y0 + 1) & mask
    p00 = data[start + y0 * side + x0]
    p01 = data[start + y0 * side + x1]
    p10 = data[start + y1 * side + x0]
    p11 = data[start + y1 * side + x1]
    w00 = (1.0 - wx) * (1.0 - wy)
    w01 = wx * (1.0 - wy)
    w10 = (1.0 - wx) * wy
    w11 = wx * wy
    for c in range(3):
        shift = 16 - 8 * c
        out[c] = (((p00 >> shift) & 255) * w00 + ((p01 >> shift) & 255) * w01
                  + ((p10 >> shift) & 255) * w10 + ((p11 >> shift) & 255) * w11)


def _screen_bounds(q: Quads, intrinsics: Intrinsics, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel bounding boxes ``[Q, 4]`` (u_min, u_max, v_min, v_max) of camera-frame quads, and
    which quads ``[Q]`` reach the image.  Each quad is clipped at the near plane first."""
    k = intrinsics
    corners = np.stack([q.origin, q.origin + q.edge_u, q.origin + q.edge_u + q.edge_v, q.origin + q.edge_v], 1)
    bounds = np.zeros((len(q), 4))
    visible = np.zeros(len(q), bool)
    for i, polygon in enumerate(corners):
        points = []
        for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
            if a[2] >= NEAR:
                points.append(a)
            if (a[2] >= NEAR) != (b[2] >= NEAR):  # the edge crosses the near plane
                points.append(a + (b - a) * (NEAR - a[2]) / (b[2] - a[2]))
        if not points:
            continue
        p = np.array(points)
        u = k.fx * p[:, 0] / p[:, 2] + k.cx
        v = k.fy * p[:, 1] / p[:, 2] + k.cy
        bounds[i] = [u.min() - margin, u.max() + margin, v.min() - margin, v.max() + margin]
        visible[i] = bounds[i, 1] >= -1 and bounds[i, 0] <= k.width and bounds[i, 3] >= -1 and bounds[i, 2] <= k.height
    return bounds, visible


@numba.njit(cache=True, fastmath=True)
def _cast(u, v, dx, dy, candidates, n_candidates, origin, edge_u, edge_v, normal, n_dot_o, inv_uu, inv_vv,
          bounds):  # pragma: no cover - compiled
    """Nearest front-facing quad hit by the ray (dx, dy, 1) through pixel (u, v).

    Only ``candidates[:n_candidates]`` whose screen bounds contain (u, v) are tested.
    Returns (quad, t = z-depth, a, b, n.d > 0); quad -1 when nothing is hit.
    """
    best_q = -1
    best_t = np.inf
    best_a = 0.0
    best_b = 0.0
    best_nd = 0.0
    for i in range(n_candidates):
        q = candidates[i]
        if u < bounds[q, 0] or u > bounds[q, 1]:
            continue
        nd = normal[q, 0] * dx + normal[q, 1] * dy + normal[q, 2]
        if nd <= 1e-9:
            continue
        t = n_dot_o[q] / nd
        if t <= NEAR or t >= best_t:
            continue
        px = t * dx - origin[q, 0]
        py = t * dy - origin[q, 1]
        pz = t - origin[q, 2]
        a = (px * edge_u[q, 0] + py * edge_u[q, 1] + pz * edge_u[q, 2]) * inv_uu[q]
        if a < 0.0 or a > 1.0:
            continue
        b = (px * edge_v[q, 0] + py * edge_v[q, 1] + pz * edge_v[q, 2]) * inv_vv[q]
        if b < 0.0 or b > 1.0:
            continue
        best_q, best_t, best_a, best_b, best_nd = q, t, a, b, nd
    return best_q, best_t, best_a, best_b, best_nd


@numba.njit(cache=True, fastmath=True, parallel=True)
def _render_kernel(width, height, ss, fx, fy, cx, cy, origin, edge_u, edge_v, normal, n_dot_o, inv_uu, inv_vv,
                   bounds, texture, scale_a, scale_b, density, body_of, data, level_base, size, background,
                   with_depth, out_rgb, out_depth, out_body):  # pragma: no cover - compiled
    n_levels = level_base.shape[0]
    focal = np.sqrt(fx * fy) * ss
    inv_samples = 1.0 / (ss * ss * 255.0)
    n_quads = origin.shape[0]
    for row in numba.prange(height):
        texel = np.empty(3, np.float32)
        texel2 = np.empty(3, np.float32)
        candidates = np.empty(n_quads, np.int64)  # quads whose screen bounds overlap this row
        n_candidates = 0
        for q in range(n_quads):
            if bounds[q, 2] <= row + 0.5 and bounds[q, 3] >= row - 0.5:
                candidates[n_candidates] = q
                n_candidates += 1
        for col in range(width):
            acc0 = 0.0
            acc1 = 0.0
            acc2 = 0.0
            for sy in range(ss):
                v = row - 0.5 + (sy + 0.5) / ss
                dy = (v - cy) / fy
                for sx in range(ss):
                    u = col - 0.5 + (sx + 0.5) / ss
                    dx = (u - cx) / fx
                    q, t, a, b, nd = _cast(u, v, dx, dy, candidates, n_candidates, origin, edge_u, edge_v,
                                           normal, n_dot_o, inv_uu, inv_vv, bounds)
                    if q < 0:
                        acc0 += background * 255.0
                        acc1 += background * 255.0
                        acc2 += background * 255.0
                        continue
                    # footprint of one sample on the surface (metres) -> texels -> mip level
                    footprint = t / (focal * np.sqrt(nd))
                    lod = np.log2(max(footprint * density[q], 1.0))
                    lod = min(lod, n_levels - 1.0)
                    l0 = int(lod)
                    frac = lod - l0
                    l1 = min(l0 + 1, n_levels - 1)
                    side0 = size >> l0
                    side1 = size >> l1
                    x = a * scale_a[q]
                    y = b * scale_b[q]
                    _bilinear(data, level_base[l0], texture[q], side0, x / (1 << l0), y / (1 << l0), texel)
                    if frac > 0.02:
                        _bilinear(data, level_base[l1], texture[q], side1, x / (1 << l1), y / (1 << l1), texel2)
                        for c in range(3):
                            texel[c] = texel[c] * (1.0 - frac) + texel2[c] * frac
                    acc0 += texel[0]
                    acc1 += texel[1]
                    acc2 += texel[2]
            out_rgb[row, col, 0] = acc0 * inv_samples
            out_rgb[row, col, 1] = acc1 * inv_samples
            out_rgb[row, col, 2] = acc2 * inv_samples
            if with_depth:
                q, t, a, b, nd = _cast(col, row, (col - cx) / fx, (row - cy) / fy, candidates, n_candidates,
                                       origin, edge_u, edge_v, normal, n_dot_o, inv_uu, inv_vv, bounds)
                if q >= 0:
                    out_depth[row, col] = t
                    out_body[row, col] = body_of[q]


def build_scene(rng: np.random.Generator, dynamic: bool = False, texture_detail: str = "default",
                objects: int = 1, object_size: float = 0.45) -> Scene:
    """The benchmark room: 5.0 x 6.0 x 2.7 m, three textured boxes, optionally moving boxes.

    Room (world, z up): x in [-2.5, 2.5], y in [-1.5, 4.5], z in [0, 2.7]; the camera stands
    near the origin at 1.4 m height looking along +y, so the far wall is ~4.3 m away and the
    boxes 2.3-3.5 m.  ``rng`` places the boxes.  With ``dynamic``, ``objects`` moving boxes
    (bodies 1, 2, ...; textures :data:`OBJECT_TEXTURES`) are cubes of edge ``object_size`` metres,
    each in its own frame centred at its origin (the scene does not move them: poses are
    passed to :meth:`Scene.render`).  ``texture_detail``: ``default`` (photographs at tiles of
    ~1 m) or ``fine`` (the same room and layout with high-contrast detail of 1-3 pixels in
    the 320x240 views: printed text, noise and stripe patterns, photographs at small tiles).
    """
    if texture_detail not in TEXTURE_DETAILS:
        raise ValueError(f"texture_detail must be one of {TEXTURE_DETAILS}, got {texture_detail!r}")
    fine = texture_detail == "fine"
    names = ["motorcycle", "brick", "ihc", "gravel", "grass", "cameraman", "astronaut", "coffee", "rocket"]
    if fine:
        names += list(PROCEDURAL_TEXTURES)
    if dynamic and not 1 <= objects <= len(OBJECT_TEXTURES):
        raise ValueError(f"objects must be 1..{len(OBJECT_TEXTURES)}, got {objects}")
    if dynamic and not 0.05 <= object_size <= 1.5:
        raise ValueError(f"object_size must be 0.05..1.5 m, got {object_size}")
    if dynamic:
        names += list(OBJECT_TEXTURES[:objects])
    atlas = TextureAtlas.load(names)
    t = atlas.index
    lo, hi = np.array([-2.5, -1.5, 0.0]), np.array([2.5, 4.5, 2.7])
    room = box_quads(lo, hi, 0, (1.0, 1.0), inside=True)
    # per wall texture and tile size (metres): order of box_quads' faces
    wall_textures = [("cameraman", (1.4, 1.4)), ("motorcycle", (2.6, 1.75)), ("brick", (1.1, 1.1)),
                     ("ihc", (1.2, 1.2)), ("grass", (1.3, 1.3)), ("gravel", (0.9, 0.9))]
    if fine:  # the far wall (+y, 2nd) and the side walls carry the finest patterns
        wall_textures = [("fine_stripes", (0.5, 0.5)), ("fine_text", (1.0, 1.0)), ("fine_noise", (0.45, 0.45)),
                         ("brick", (0.35, 0.35)), ("grass", (0.4, 0.4)), ("gravel", (0.3, 0.3))]
    room.texture = np.array([t(name) for name, _ in wall_textures], np.int64)
    room.tile_u = np.array([tile[0] for _, tile in wall_textures])
    room.tile_v = np.array([tile[1] for _, tile in wall_textures])
    parts = [room]
    boxes = []
    slots = [(-1.5, 3.1), (0.2, 3.5), (1.4, 2.7)]  # x, y centres; jittered per seed
    box_tile = (0.3, 0.3) if fine else (0.7, 0.7)
    for (x, y), texture in zip(slots, ["astronaut", "coffee", "rocket"]):
        cx = x + rng.uniform(-0.25, 0.25)
        cy = y + rng.uniform(-0.2, 0.2)
        half = rng.uniform(0.25, 0.4, size=2)
        height = rng.uniform(0.5, 1.3)
        b_lo, b_hi = np.array([cx - half[0], cy - half[1], 0.0]), np.array([cx + half[0], cy + half[1], height])
        parts.append(box_quads(b_lo, b_hi, t(texture), box_tile))
        boxes.append({"texture": texture, "min": b_lo.round(4).tolist(), "max": b_hi.round(4).tolist()})
    description = {
        "room": {"min": lo.tolist(), "max": hi.tolist(), "textures": [n for n, _ in wall_textures]},
        "boxes": boxes,
        "textures": "scikit-image data files: " + ", ".join(TEXTURE_FILES[n][0] for n in names if n in TEXTURE_FILES)
        + (", procedural: " + ", ".join(PROCEDURAL_TEXTURES) if fine else ""),
        "texture_detail": texture_detail,
    }
    if dynamic:
        half = object_size / 2.0
        for k, texture in enumerate(OBJECT_TEXTURES[:objects]):
            parts.append(box_quads(np.full(3, -half), np.full(3, half), t(texture), (object_size, object_size),
                                   body=DYNAMIC_BODY + k))
        description["moving_box"] = {"texture": OBJECT_TEXTURES[0], "size": object_size}
        if objects > 1:
            description["moving_boxes"] = [{"texture": n, "size": object_size} for n in OBJECT_TEXTURES[:objects]]
    return Scene(Quads.concat(parts), atlas, description)
