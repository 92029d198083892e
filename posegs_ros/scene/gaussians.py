"""The Gaussian map: parameters, Adam state kept consistent under add / remove, 3DGS PLY I/O.

Parameters are stored the way 3DGS stores them (and the PLY format expects):

- ``means``     ``[N, 3]``   positions in the map frame
- ``quats``     ``[N, 4]``   rotations, ``wxyz``, not necessarily normalized
- ``scales``    ``[N, 3]``   log of the standard deviations
- ``opacities`` ``[N]``      logits of the opacity
- ``sh0``       ``[N, 1, 3]`` DC spherical-harmonics coefficient of the colour
- ``shN``       ``[N, K-1, 3]`` higher SH coefficients, ``K = (sh_degree + 1)^2``

plus the non-optimized ``group_ids`` ``[N]`` (0 = static map, ``g > 0`` = motion group ``g``).

Adding or removing Gaussians keeps each Adam optimizer's moments row-aligned with the
parameters (new rows start with zero moments), as gsplat's ``strategy/ops`` does; the cap
(``max_gaussians``) bounds memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["SH_C0", "GaussianMap", "rgb_to_sh0", "sh0_to_rgb", "PlyError", "write_ply", "read_ply"]

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC SH coefficient ``[..., 3]`` whose degree-0 colour is ``rgb`` ``[..., 3]`` in [0, 1]."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Degree-0 colour ``[..., 3]`` of DC coefficients ``[..., 3]`` (3DGS: ``0.5 + C0 * dc``)."""
    return (sh0 * SH_C0 + 0.5).clamp(0.0, 1.0)


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


class GaussianMap:
    """A set of 3D Gaussians with per-parameter Adam optimizers and a capacity cap."""

    def __init__(
        self,
        sh_degree: int = 0,
        max_gaussians: int = 100_000,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if sh_degree < 0 or sh_degree > 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        self.sh_degree = sh_degree
        self.max_gaussians = int(max_gaussians)
        self.device = torch.device(device)
        self.dtype = dtype
        k = (sh_degree + 1) ** 2
        empty = {
            "means": torch.zeros(0, 3),
            "quats": torch.zeros(0, 4),
            "scales": torch.zeros(0, 3),
            "opacities": torch.zeros(0),
            "sh0": torch.zeros(0, 1, 3),
            "shN": torch.zeros(0, k - 1, 3),
        }
        self.params: dict[str, torch.nn.Parameter] = {
            name: torch.nn.Parameter(t.to(device=self.device, dtype=dtype)) for name, t in empty.items()
        }
        self.group_ids = torch.zeros(0, dtype=torch.long, device=self.device)
        self.optimizers: dict[str, torch.optim.Adam] = {}

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def quats(self) -> Tensor:
        return self.params["quats"]

    @property
    def log_scales(self) -> Tensor:
        return self.params["scales"]

    @property
    def opacity_logits(self) -> Tensor:
        return self.params["opacities"]

    def activated(self) -> dict[str, Tensor]:
        """Render-ready tensors: ``means [N,3]``, ``quats [N,4]``, ``scales [N,3]`` (linear),
        ``opacities [N]`` in (0, 1), ``colors [N, K, 3]`` SH coefficients."""
        p = self.params
        return {
            "means": p["means"],
            "quats": p["quats"],
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "colors": torch.cat([p["sh0"], p["shN"]], dim=1),
        }

    def rgb(self) -> Tensor:
        """Degree-0 colour of every Gaussian ``[N, 3]`` in [0, 1] (detached)."""
        return sh0_to_rgb(self.params["sh0"].detach()[:, 0])

    # ------------------------------------------------------------ optimizers
    def setup_optimizers(self, learning_rates: Mapping[str, float]) -> None:
        """One Adam per parameter (names in ``PARAM_NAMES``; missing names are not optimized)."""
        self.optimizers = {
            name: torch.optim.Adam([self.params[name]], lr=lr, eps=1e-15)
            for name, lr in learning_rates.items()
            if name in self.params
        }

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def step(self, names: tuple[str, ...] | None = None) -> None:
        """Adam step on the named parameters (all optimized ones by default)."""
        for name, opt in self.optimizers.items():
            if names is None or name in names:
                opt.step()

    def _replace(self, new_values: Mapping[str, Tensor], state_update) -> None:  # noqa: ANN001
        """Swap every parameter for ``new_values[name]`` and remap its Adam moments."""
        for name, value in new_values.items():
            old = self.params[name]
            new = torch.nn.Parameter(value.detach().to(device=self.device, dtype=self.dtype).contiguous())
            opt = self.optimizers.get(name)
            if opt is not None:
                state = opt.state.pop(old, None)
                opt.param_groups[0]["params"] = [new]
                if state:
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key] = state_update(state[key])
                    opt.state[new] = state
            self.params[name] = new

    # ------------------------------------------------------------- add/remove
    def add(
        self,
        means: Tensor,
        rgb: Tensor,
        scales: Tensor,
        opacities: Tensor | float = 0.5,
        quats: Tensor | None = None,
        group_ids: Tensor | int = 0,
    ) -> int:
        """Append Gaussians; returns how many were added (the cap may cut the batch).

        Args:
            means: ``[M, 3]`` positions.
            rgb: ``[M, 3]`` colours in [0, 1].
            scales: ``[M, 3]`` or ``[M]`` linear standard deviations (isotropic if ``[M]``).
            opacities: ``[M]`` or a scalar in (0, 1).
            quats: ``[M, 4]`` wxyz, identity by default.
            group_ids: ``[M]`` or a scalar motion-group id.
        """
        m = means.shape[0]
        room = max(self.max_gaussians - len(self), 0)
        if m > room:
            keep = torch.linspace(0, m - 1, room, device=means.device).round().long() if room else means.new_zeros(0, dtype=torch.long)
            means, rgb, scales = means[keep], rgb[keep], scales[keep]
            if isinstance(opacities, Tensor) and opacities.ndim:
                opacities = opacities[keep]
            if quats is not None:
                quats = quats[keep]
            if isinstance(group_ids, Tensor) and group_ids.ndim:
                group_ids = group_ids[keep]
            m = room
        if m == 0:
            return 0
        dev, dt = self.device, self.dtype
        scales = scales.to(dev, dt)
        if scales.ndim == 1:
            scales = scales[:, None].expand(m, 3)
        op = torch.as_tensor(opacities, device=dev, dtype=dt).expand(m)
        q = quats.to(dev, dt) if quats is not None else torch.tensor([1.0, 0, 0, 0], device=dev, dtype=dt).expand(m, 4)
        k = (self.sh_degree + 1) ** 2
        rows = {
            "means": means.to(dev, dt),
            "quats": q,
            "scales": torch.log(scales.clamp_min(1e-8)),
            "opacities": _logit(op),
            "sh0": rgb_to_sh0(rgb.to(dev, dt))[:, None, :],
            "shN": torch.zeros(m, k - 1, 3, device=dev, dtype=dt),
        }
        return self._append(rows, torch.as_tensor(group_ids, dtype=torch.long, device=dev).expand(m))

    @torch.no_grad()
    def duplicate(self, index: Tensor, means: Tensor, log_scales: Tensor) -> int:
        """Append copies of Gaussians ``index`` ``[M]`` (long) at ``means`` ``[M, 3]`` with
        ``log_scales`` ``[M, 3]`` (every other parameter and the group id copied, fresh Adam
        moments); the cap may cut the batch. Returns how many were added."""
        room = max(self.max_gaussians - len(self), 0)
        index, means, log_scales = index[:room], means[:room], log_scales[:room]
        m = int(index.shape[0])
        if m == 0:
            return 0
        rows = {name: self.params[name].detach()[index] for name in PARAM_NAMES}
        rows["means"] = means.to(self.device, self.dtype)
        rows["scales"] = log_scales.to(self.device, self.dtype)
        return self._append(rows, self.group_ids[index])

    def _append(self, rows: Mapping[str, Tensor], group_ids: Tensor) -> int:
        """Append ``rows`` (every name of ``PARAM_NAMES``, ``[M, ...]`` stored form) with
        ``group_ids`` ``[M]`` and zero Adam moments; refuses non-finite values. Returns M."""
        if not all(torch.isfinite(v).all() for v in rows.values()):
            raise ValueError("refusing to add Gaussians with non-finite parameters")
        m = int(group_ids.shape[0])
        self._replace(
            {name: torch.cat([self.params[name].detach(), rows[name]], 0) for name in PARAM_NAMES},
            lambda s: torch.cat([s, torch.zeros((m, *s.shape[1:]), dtype=s.dtype, device=s.device)], 0),
        )
        self.group_ids = torch.cat([self.group_ids, group_ids], 0)
        return m

    def keep(self, mask: Tensor) -> int:
        """Keep only the Gaussians where ``mask`` ``[N]`` (bool) is True; returns how many were removed."""
        if mask.shape != (len(self),) or mask.dtype != torch.bool:
            raise ValueError(f"keep() needs a bool mask of shape ({len(self)},), got {tuple(mask.shape)} {mask.dtype}")
        removed = int((~mask).sum())
        if removed == 0:
            return 0
        self._replace({name: self.params[name].detach()[mask] for name in PARAM_NAMES}, lambda s: s[mask])
        self.group_ids = self.group_ids[mask]
        return removed

    def remove(self, mask: Tensor) -> int:
        """Remove the Gaussians where ``mask`` ``[N]`` (bool) is True; returns how many."""
        return self.keep(~mask)

    @torch.no_grad()
    def sanitize(self) -> int:
        """Remove Gaussians with any non-finite parameter (never let NaN into the map)."""
        bad = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        for v in self.params.values():
            bad |= ~torch.isfinite(v.reshape(len(self), -1)).all(dim=1)
        return self.remove(bad) if bad.any() else 0

    def clear(self) -> None:
        """Remove every Gaussian (keeps the optimizers' learning rates)."""
        self.keep(torch.zeros(len(self), dtype=torch.bool, device=self.device))

    def state_dict(self) -> dict[str, Tensor]:
        """Detached copies of all parameters and group ids."""
        out = {name: p.detach().clone() for name, p in self.params.items()}
        out["group_ids"] = self.group_ids.clone()
        return out

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Replace all Gaussians by ``state`` (as from :meth:`state_dict` or :func:`read_ply`);
        optimizer moments are reset."""
        n = state["means"].shape[0]
        self._replace({name: state[name] for name in PARAM_NAMES}, lambda s: torch.zeros((n, *s.shape[1:]), dtype=s.dtype, device=s.device))
        self.group_ids = state.get("group_ids", torch.zeros(n, dtype=torch.long)).to(self.device).long()

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.params.items()

    # ------------------------------------------------------------------ PLY
    def save_ply(self, path: str | Path) -> Path:
        """Write the standard 3DGS PLY (binary little endian) atomically; returns the path."""
        return write_ply(path, self.state_dict())

    @classmethod
    def from_ply(cls, path: str | Path, max_gaussians: int = 1_000_000, device: torch.device | str = "cpu") -> GaussianMap:
        """Load a 3DGS PLY written by this package or by common 3DGS trainers."""
        state = read_ply(path)
        k = state["shN"].shape[1] + 1
        sh_degree = int(round(math.sqrt(k))) - 1
        gmap = cls(sh_degree=sh_degree, max_gaussians=max(max_gaussians, state["means"].shape[0]), device=device)
        gmap.load_state_dict(state)
        return gmap


class PlyError(ValueError):
    """A PLY file that is not a readable 3DGS point cloud."""


_PLY_TYPES = {
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
    "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1",
    "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
    "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4",
}


def write_ply(path: str | Path, state: Mapping[str, Tensor]) -> Path:
    """Write 3DGS parameters (as in :meth:`GaussianMap.state_dict`) to a binary PLY atomically.

    Properties: ``x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3`` (the layout
    of the reference 3DGS implementation, which splat viewers read), plus ``motion_group``
    (int) when any Gaussian belongs to a motion group.
    """
    path = Path(path)
    means = state["means"].detach().cpu().float().numpy()
    n = means.shape[0]
    sh0 = state["sh0"].detach().cpu().float().numpy().reshape(n, 3)
    # f_rest is stored channel-major: all coefficients of R, then G, then B
    shn = state["shN"].detach().cpu().float().numpy()
    sh_rest = shn.transpose(0, 2, 1).reshape(n, 3 * shn.shape[1])
    columns: list[tuple[str, str, np.ndarray]] = []
    for i, axis in enumerate("xyz"):
        columns.append((axis, "<f4", means[:, i]))
    for axis in ("nx", "ny", "nz"):
        columns.append((axis, "<f4", np.zeros(n, np.float32)))
    for i in range(3):
        columns.append((f"f_dc_{i}", "<f4", sh0[:, i]))
    for i in range(sh_rest.shape[1]):
        columns.append((f"f_rest_{i}", "<f4", sh_rest[:, i]))
    columns.append(("opacity", "<f4", state["opacities"].detach().cpu().float().numpy().reshape(n)))
    scales = state["scales"].detach().cpu().float().numpy()
    for i in range(3):
        columns.append((f"scale_{i}", "<f4", scales[:, i]))
    quats = state["quats"].detach().cpu().float().numpy()
    for i in range(4):
        columns.append((f"rot_{i}", "<f4", quats[:, i]))
    groups = state.get("group_ids")
    if groups is not None and bool((groups != 0).any()):
        columns.append(("motion_group", "<i4", groups.cpu().numpy().astype(np.int32)))
    record = np.empty(n, dtype=[(name, dt) for name, dt, _ in columns])
    for name, _, values in columns:
        record[name] = values
    type_names = {"<f4": "float", "<i4": "int"}
    header = "ply\nformat binary_little_endian 1.0\n"
    header += "comment written by posegs_ros (3D Gaussian Splatting map)\n"
    header += f"element vertex {n}\n"
    header += "".join(f"property {type_names[dt]} {name}\n" for name, dt, _ in columns)
    header += "end_header\n"
    payload = header.encode("ascii") + record.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a binary little-endian 3DGS PLY into parameter tensors (see :func:`write_ply`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PlyError(f"cannot read {path}: {err}") from err
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError(f"{path} is not a PLY file (no 'ply' magic / end_header)")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = next((line.split()[1] for line in header if line.startswith("format")), None)
    if fmt != "binary_little_endian":
        raise PlyError(f"{path}: only binary_little_endian PLY is supported, found {fmt}")
    props: list[tuple[str, str]] = []
    count = None
    in_vertex = False
    for line in header:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count, in_vertex = int(parts[2]), True
        elif parts and parts[0] == "element":
            in_vertex = False
        elif parts and parts[0] == "property" and in_vertex:
            if parts[1] == "list":
                raise PlyError(f"{path}: list properties in the vertex element are not supported")
            if parts[1] not in _PLY_TYPES:
                raise PlyError(f"{path}: unknown property type {parts[1]}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    if count is None:
        raise PlyError(f"{path}: no vertex element")
    dtype = np.dtype(props)
    body = data[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise PlyError(f"{path}: truncated: {count} vertices need {count * dtype.itemsize} bytes, found {len(body)}")
    rec = np.frombuffer(body, dtype=dtype, count=count)
    names = set(dtype.names or ())
    needed = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"}
    missing = sorted(needed - names)
    if missing:
        raise PlyError(f"{path}: not a 3DGS PLY, missing properties {', '.join(missing)}")

    def cols(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([rec[k].astype(np.float32) for k in keys], axis=1))

    rest = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k.split("_")[-1]))
    if len(rest) % 3:
        raise PlyError(f"{path}: {len(rest)} f_rest properties is not a multiple of 3")
    n_rest = len(rest) // 3
    if n_rest and int(round(math.sqrt(n_rest + 1))) ** 2 != n_rest + 1:
        raise PlyError(f"{path}: {n_rest + 1} SH coefficients per channel is not a square")
    sh_rest = cols(*rest) if rest else torch.zeros(count, 0)
    state = {
        "means": cols("x", "y", "z"),
        "quats": cols("rot_0", "rot_1", "rot_2", "rot_3"),
        "scales": cols("scale_0", "scale_1", "scale_2"),
        "opacities": torch.from_numpy(rec["opacity"].astype(np.float32)),
        "sh0": cols("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": sh_rest.reshape(count, 3, n_rest).transpose(1, 2).contiguous(),
        "group_ids": torch.from_numpy(rec["motion_group"].astype(np.int64)) if "motion_group" in names else torch.zeros(count, dtype=torch.long),
    }
    return state
