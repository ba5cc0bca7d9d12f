"""The ten shape classes of `vitjax_scenes` as signed distance functions in local units (the
shape fits the unit circle, y points down). Pure NumPy; `scenes_render` places, textures and
rasterises them."""

from __future__ import annotations

import math

import numpy as np

SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross",
               "ring", "heart", "hexagon", "crescent", "arrow")


# Polygonal shapes are unions of convex pieces. Inside a convex piece the largest of its edges'
# signed line distances is the exact distance to the boundary; outside it is a lower bound. So the
# sign, hence the mask, is exact at one multiply-add per edge and pixel, and exact distances to
# the edges are computed only for the thin band of pixels that antialiasing needs (`shape_sdf`).
def _regular_polygon(n: int, radius: float, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), -radius * np.sin(angles)], axis=1)


def _box(half_width: float, half_height: float, x: float = 0.0) -> np.ndarray:
    return np.array([[x - half_width, -half_height], [x + half_width, -half_height],
                     [x + half_width, half_height], [x - half_width, half_height]])


def _star_pieces(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> list[np.ndarray]:
    """The inner pentagon and one triangle per spike. The spikes' bases reach a little inside the
    pentagon: pieces that only touch would leave half-covered seams along the shared edges."""
    angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
    def ring(radii):
        return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)
    pentagon = ring(np.full(2 * points, inner))[1::2]
    based = ring(np.where(np.arange(2 * points) % 2 == 0, outer, 0.85 * inner))
    spikes = [based[[2 * i - 1, 2 * i, 2 * i + 1 - 2 * points]] for i in range(points)]
    return [pentagon] + spikes


# A heart: a square standing on a corner with a disc on each upper edge, fitted in the unit circle.
_HEART_H = 0.98 / 1.345  # half-diagonal of the square
_HEART_Y = 0.1035 * _HEART_H  # centres the heart vertically
_HEART_DISCS = ((-_HEART_H / 2, _HEART_Y - _HEART_H / 2), (_HEART_H / 2, _HEART_Y - _HEART_H / 2))

# Vertices (x, y) with y pointing down, in the unit circle, counter-clockwise on screen.
_CONVEX_PIECES = {
    "square": [_box(0.7, 0.7)],
    "triangle": [_regular_polygon(3, 1.0)],
    "star": _star_pieces(),
    "cross": [_box(0.95, 0.3), _box(0.3, 0.95)],
    "heart": [np.array([[0.0, _HEART_Y - _HEART_H], [-_HEART_H, _HEART_Y],
                        [0.0, _HEART_Y + _HEART_H], [_HEART_H, _HEART_Y]])],
    "hexagon": [_regular_polygon(6, 0.95, phase=0.0)],
    "arrow": [_box(0.575, 0.22, x=-0.375), np.array([[0.1, -0.6], [0.1, 0.6], [0.95, 0.0]])],
}


def _half_planes(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unit outward edge normals with offsets (n.p - offset = line distance), and piece starts."""
    rows, starts = [], []
    for vertices in pieces:
        starts.append(len(rows))
        centroid = vertices.mean(axis=0)
        for a, b in zip(vertices, np.roll(vertices, -1, axis=0)):
            normal = np.array([b[1] - a[1], a[0] - b[0]]) / np.linalg.norm(b - a)
            if np.dot(normal, a - centroid) < 0:  # point the normal away from the piece
                normal = -normal
            rows.append([normal[0], normal[1], np.dot(normal, a)])
    return np.array(rows, np.float32).T, np.array(starts)


def _edges(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every edge of every piece as (start points, end points)."""
    starts = np.concatenate(pieces)
    ends = np.concatenate([np.roll(vertices, -1, axis=0) for vertices in pieces])
    return starts.astype(np.float32), ends.astype(np.float32)


_HALF_PLANES = {name: _half_planes(pieces) for name, pieces in _CONVEX_PIECES.items()}
_EDGES = {name: _edges(pieces) for name, pieces in _CONVEX_PIECES.items()}


def _segment_distance(u: np.ndarray, v: np.ndarray, edges) -> np.ndarray:
    """Distance from each point to the nearest of the segments."""
    (ax, ay), (bx, by) = edges[0].T, edges[1].T
    ex, ey = bx - ax, by - ay
    wx, wy = u[:, None] - ax, v[:, None] - ay
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.sqrt(np.min((wx - ex * t) ** 2 + (wy - ey * t) ** 2, axis=1))


def _moon_sdf(u, v, outer: float, shift: float, inner: float) -> np.ndarray:
    """Exact signed distance of a disc (radius `outer`, at 0) minus a disc (radius `inner`, at
    (shift, 0)); the plain max() of the two would leave a halo beyond the sharp tips."""
    v = np.abs(v)
    a = (outer**2 - inner**2 + shift**2) / (2 * shift)  # the tips are at (a, +-b)
    b = math.sqrt(max(outer**2 - a**2, 0.0))
    near_tip = u * b - v * a > shift * np.maximum(b - v, 0.0)
    return np.where(near_tip, np.hypot(u - a, v - b),
                    np.maximum(np.hypot(u, v) - outer, inner - np.hypot(u - shift, v)))


def shape_sdf(shape: int, u: np.ndarray, v: np.ndarray, exact_below: float = 0.0) -> np.ndarray:
    """Signed distance (negative inside) of class `shape` at local coordinates (u, v).

    Outside polygonal shapes the value is a lower bound, made exact where it is below
    `exact_below`: near sharp corners the bound is several times too small, which would draw a
    faint halo beyond a star's tips, so the renderer asks for exact values within its
    antialiasing reach.
    """
    name = SHAPE_NAMES[shape]
    if name == "circle":
        return np.hypot(u, v) - 0.9
    if name == "ring":
        return np.abs(np.hypot(u, v) - 0.68) - 0.24
    if name == "crescent":
        return _moon_sdf(u, v, outer=0.95, shift=0.5, inner=0.78)
    (nx, ny, offset), starts = _HALF_PLANES[name]
    lines = u[..., None] * nx + v[..., None] * ny - offset
    distance = np.min(np.maximum.reduceat(lines, starts, axis=-1), axis=-1)
    # Outside every convex piece, the distance to their union is the distance to the nearest edge.
    near = (distance > 0) & (distance < exact_below)
    distance[near] = _segment_distance(u[near], v[near], _EDGES[name])
    if name == "heart":
        for cx, cy in _HEART_DISCS:
            distance = np.minimum(distance, np.hypot(u - cx, v - cy) - _HEART_H / math.sqrt(2))
    return distance
