"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Each write goes to a temporary file in the destination's directory, is flushed and fsync'ed,
then ``os.replace``'d over the destination (atomic on POSIX and Windows within one file
system); the directory is fsync'ed afterwards where the platform allows it.  Permissions follow
the umask like a plain ``open(path, "w")``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_image",
    "atomic_save_npy",
    "json_safe",
]


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path``, on error it is removed.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8).  Parent directories
    are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        text_encoding = (encoding or "utf-8") if mode == "w" else None
        with os.fdopen(fd, mode, encoding=text_encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars / arrays turned into Python ones and non-finite floats into strings.

    JSON has no NaN / infinity: they become ``"nan"``, ``"inf"``, ``"-inf"`` (strings), so the
    file stays valid JSON for every reader.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike[str], value: Any, indent: int = 2) -> Path:
    """Write ``value`` as JSON atomically (through :func:`json_safe`); returns the path."""
    text = json.dumps(json_safe(value), indent=indent, allow_nan=False, sort_keys=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an image atomically; format from the suffix (``.png``, ``.jpg``).

    ``image`` is RGB ``[H, W, 3] uint8``, grey ``[H, W]`` uint8 / uint16, or bool ``[H, W]``
    (written as 0 / 255).
    """
    target = Path(path)
    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = np.where(array, np.uint8(255), np.uint8(0))
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]  # OpenCV writes BGR
    elif array.ndim != 2:
        raise ValueError(f"image must be [H, W, 3] RGB or [H, W] grey, got {array.shape}")
    ok, encoded = cv2.imencode(target.suffix or ".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"OpenCV cannot encode {array.shape} {array.dtype} as {target.suffix!r}")
    return atomic_write_bytes(target, encoded.tobytes())


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """``np.save`` atomically (no pickles); returns the path."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)
    return Path(path)
