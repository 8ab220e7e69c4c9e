"""Drawing primitives for the synthetic shapes dataset: shapes, textures, backgrounds, scenes.

Images are H x W x 3 uint8 RGB arrays; masks are H x W bool arrays. Everything random is
drawn from the `numpy.random.Generator` passed in, so a scene is a pure function of it.

A scene paints objects in order, later ones in front. Each object's annotation is its
*visible* region: its own shape minus everything painted after it. Placement rejects an
object that would hide more than half of an earlier one or punch a hole into it, so every
visible region is hole-free (COCO polygons cannot express holes) and occlusion stays partial.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ellipse")

_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fixed-point bits: vertices at 1/16 px
_MIN_CONTRAST = 80.0  # L2 distance in RGB between an object's colour and the background under it
_MAX_HIDDEN_FRACTION = 0.5  # of an earlier object's own area that later objects may cover


@dataclass
class SceneObject:
    """One painted object.

    Attributes:
        label: index into CLASS_NAMES.
        visible: H x W bool mask of the pixels showing this object in the final image.
        window: (rows, cols) slices of the image outside which `visible` is all False.
        full_area: pixel count of the whole shape inside the image (visible or hidden).
    """

    label: int
    visible: np.ndarray
    window: tuple[slice, slice]
    full_area: int


def shape_polygon(label: int, cx: float, cy: float, radius: float, angle: float,
                  aspect: float = 0.5) -> np.ndarray:
    """Vertices (P, 2) as float (x, y) of a shape centred at (cx, cy).

    Args:
        label: index into CLASS_NAMES.
        cx: centre x in pixels.
        cy: centre y in pixels.
        radius: circumradius in pixels (half the longer axis for the ellipse).
        angle: rotation in radians.
        aspect: short/long axis ratio, used by the ellipse only.
    """
    name = CLASS_NAMES[label]
    if name in ("circle", "ellipse"):
        t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        minor = radius * (aspect if name == "ellipse" else 1.0)
        pts = np.stack([radius * np.cos(t), minor * np.sin(t)], axis=1)
    elif name == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * radius
    elif name == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * radius
    elif name == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif name == "cross":
        a, b = radius / np.sqrt(1 + 0.35**2), 0.35 * radius / np.sqrt(1 + 0.35**2)
        pts = np.array([[b, b], [a, b], [a, -b], [b, -b], [b, -a], [-b, -a], [-b, -b], [-a, -b],
                        [-a, b], [-b, b], [-b, a], [b, a]], dtype=np.float64)
    else:  # pragma: no cover - CLASS_NAMES and this function change together
        raise ValueError(f"unknown shape {name!r}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W bool mask of the pixels inside `polygon` (sub-pixel vertex precision)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    pts = np.round(polygon * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return mask.astype(bool)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int,
                  channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [-1, 1], shape (H, W, channels)."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(height, width, channels), -1.0, 1.0)


def _grain(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise with standard deviation `std` (4x cheaper than normal noise)."""
    noise = rng.random(shape, dtype=np.float32) - np.float32(0.5)
    return noise * np.float32(std * np.sqrt(12.0))


def texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """A float32 (H, W, 3) fill around `colour`: flat, stripes, checker, blotches or grain."""
    kind = rng.integers(5)
    base = np.broadcast_to(colour.astype(np.float32), (height, width, 3)).copy()
    if kind in (1, 2):
        second = np.clip(colour + rng.normal(0.0, 45.0, size=3), 0, 255).astype(np.float32)
        period = rng.uniform(4.0, 14.0)
        yy = np.arange(height, dtype=np.float32)[:, None]
        xx = np.arange(width, dtype=np.float32)[None, :]
        theta = rng.uniform(0, np.pi)
        u = (xx * np.cos(theta) + yy * np.sin(theta)) / period
        if kind == 1:
            sel = (np.floor(u) % 2) == 0
        else:
            v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
            sel = ((np.floor(u) + np.floor(v)) % 2) == 0
        base[sel] = second
    elif kind == 3:
        base += 35.0 * _smooth_noise(rng, height, width, cells=int(rng.integers(3, 7)))
    elif kind == 4:
        base += _grain(rng, (height, width, 3), 18.0)
    return base


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 (H, W, 3) background: colour gradient, blotches and line clutter."""
    # A colour gradient plus blotches, built on a coarse grid and upsampled in one resize
    # (cubic interpolation reproduces the linear gradient).
    cells = int(rng.integers(4, 10))
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    u = np.linspace(0.0, 1.0, cells)
    t = u[None, :] * np.cos(theta) + u[:, None] * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c0 + t[..., None] * (c1 - c0) + rng.uniform(-40.0, 40.0, size=(cells, cells, 3))
    img = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    np.clip(img, 0, 255, out=img)
    for _ in range(int(rng.integers(2, 10))):  # clutter: straight lines and scribbles
        colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        thickness = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            p0 = rng.uniform(0, 1, 2) * (width, height)
            p1 = rng.uniform(0, 1, 2) * (width, height)
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, thickness)
        else:
            steps = rng.normal(0.0, 0.06 * max(height, width), size=(int(rng.integers(4, 12)), 2))
            pts = np.cumsum(steps, axis=0) + rng.uniform(0, 1, 2) * (width, height)
            cv2.polylines(img, [pts.astype(np.int32)], False, colour, thickness)
    return img


def _window(polygon: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of the image that contain the raster of `polygon`."""
    x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(polygon.max(axis=0)).astype(int) + 2, (width, height))
    return slice(int(y0), int(max(y1, y0))), slice(int(x0), int(max(x1, x0)))


def paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray,
          window: tuple[slice, slice]) -> None:
    """Fill `mask` (zero outside `window`) in the float image `img` with a contrasting texture."""
    region, sub = img[window], mask[window]
    under = region[sub].mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    fill = texture(rng, sub.shape[0], sub.shape[1], colour)
    region[sub] = fill[sub]


def _has_hole(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0, :, 3] >= 0).any())


def _overlaps(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return (a[0].start < b[0].stop and b[0].start < a[0].stop
            and a[1].start < b[1].stop and b[1].start < a[1].stop)


def compose_scene(rng: np.random.Generator, height: int, width: int, *,
                  min_objects: int = 2, max_objects: int = 8, min_radius: float = 7.0,
                  max_radius_fraction: float = 0.35) -> tuple[np.ndarray, list[SceneObject]]:
    """Render one scene.

    Args:
        rng: source of all randomness.
        height: image height.
        width: image width.
        min_objects: fewest objects to try to place.
        max_objects: most objects to try to place.
        min_radius: smallest circumradius in pixels (radii are log-uniform).
        max_radius_fraction: largest circumradius as a fraction of min(height, width).

    Returns:
        (image uint8 (H, W, 3) RGB, objects in paint order with their visible masks).
    """
    img = background(rng, height, width)
    max_radius = max_radius_fraction * min(height, width)
    placed: list[tuple[int, np.ndarray, tuple[slice, slice], int]] = []  # SceneObject fields
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(10):
            label = int(rng.integers(len(CLASS_NAMES)))
            radius = float(np.exp(rng.uniform(np.log(min_radius), np.log(max_radius))))
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            poly = shape_polygon(label, cx, cy, radius, rng.uniform(0, 2 * np.pi),
                                 aspect=rng.uniform(0.35, 0.6))
            window = _window(poly, height, width)
            mask = rasterize(poly, height, width)
            area = int(mask[window].sum())
            # at least 60% of the shape inside the image
            if area < max(20.0, 0.6 * cv2.contourArea(poly.astype(np.float32))):
                continue
            if _hides_too_much(mask, window, placed):
                continue
            paint(rng, img, mask, window)
            for _, vis, _, _ in placed:
                vis[window] &= ~mask[window]
            placed.append((label, mask, window, area))
            break
    image = _finish(rng, img)
    return image, [SceneObject(*entry) for entry in placed]


def _hides_too_much(mask: np.ndarray, window: tuple[slice, slice],
                    placed: list[tuple[int, np.ndarray, tuple[slice, slice], int]]) -> bool:
    """Whether `mask` would cover too much of, or punch a hole into, an earlier object."""
    for _, vis, vis_window, area in placed:
        if not _overlaps(window, vis_window) or not (vis[window] & mask[window]).any():
            continue
        remaining = vis[vis_window] & ~mask[vis_window]
        if remaining.sum() < (1.0 - _MAX_HIDDEN_FRACTION) * area or _has_hole(remaining):
            return True
    return False


def classification_sample(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A size x size uint8 RGB image of one object of class `label` on a cluttered background."""
    img = background(rng, size, size)
    radius = rng.uniform(0.25, 0.45) * size
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    poly = shape_polygon(label, cx, cy, radius, rng.uniform(0, 2 * np.pi),
                         aspect=rng.uniform(0.35, 0.6))
    paint(rng, img, rasterize(poly, size, size), _window(poly, size, size))
    return _finish(rng, img)


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Soften edges, add sensor grain and quantize a float image to uint8."""
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.6)
    img += _grain(rng, img.shape, rng.uniform(2.0, 8.0))
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
