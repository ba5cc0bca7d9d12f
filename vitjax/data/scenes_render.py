"""The renderer behind the `vitjax_scenes` dataset: shapes with class textures on textured grounds.

Pure NumPy, no TensorFlow; the shapes' geometry is in `scenes_shapes`. A scene is made in two
steps:

1. `sample_scene(rng, cue_conflict)` draws a `Scene`: every parameter of every object and of the
   background, all in resolution-free units (positions and sizes are fractions of the image side).
2. `render_scene(scene, image_size)` rasterises it: an image, an instance mask and boxes.

So the same scene can be drawn at 64, 96 or 224 pixels, and a test can take a scene, change one
thing (its main object's texture) and draw it again. `make_example(seed, split, index, size)`
seeds a fresh generator from (seed, split, index), so any example is made on its own, in any order.

Each of the ten classes is a shape (the label) with its own texture family, so in the normal
splits both the outline and the surface tell the class, as in natural images. Colours are random
and carry no class information. The cue-conflict split gives the main object the shape of one
class and the texture of another; a model's shape bias is how often it answers the shape.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vitjax.data.scenes_shapes import SHAPE_NAMES, shape_sdf

# Texture family k belongs to class k. Stripe names give the direction of the lines in degrees
# (counter-clockwise from horizontal); the other families are described in `_texture_pattern`.
TEXTURE_NAMES = ("stripes_0", "stripes_45", "stripes_90", "stripes_135", "checker",
                 "dots", "rings", "blobs", "speckle", "gradient")
NUM_CLASSES = len(SHAPE_NAMES)
SPLITS = ("train", "test", "cue_conflict")

_STRIPE_DIRECTIONS = {0: 0.0, 1: 45.0, 2: 90.0, 3: 135.0}  # family -> line direction, degrees
_STRIPE_JITTER = 8.0  # degrees; keeps the four stripe families apart (45 degrees between them)
_MAIN_RADIUS = (0.22, 0.36)  # radius of the shape's circumscribed circle, in image sides
_DISTRACTOR_RADIUS = (0.09, 0.16)
_DISTRACTOR_COUNT_PROBS = (0.4, 0.35, 0.25)  # P(0), P(1), P(2) extra objects
_TEXTURE_PERIOD = (0.10, 0.14)  # image sides: 6-9 pixels at 64 px, enough to see at that size
_NOISE_LATTICE = {"blobs": 7, "speckle": 40, "background": 5}  # value-noise cells per image side


# ---------------------------------------------------------------- scene description
@dataclasses.dataclass(frozen=True)
class Texture:
    """A two-colour pattern: colour = lerp(colors[0], colors[1], pattern(x, y))."""

    kind: str  # stripes | checker | dots | rings | blobs | speckle | gradient
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    angle: float = 0.0  # radians; wave direction for stripes, lattice rotation for checker/dots
    period: float = 0.12  # image sides
    phase: tuple[float, float] = (0.0, 0.0)  # in periods
    noise_seed: int = 0
    lattice: int = 8  # value-noise cells per image side (blobs, speckle)
    center: tuple[float, float] = (0.5, 0.5)  # (y, x) for rings and gradient
    extent: float = 0.5  # half-length of the gradient ramp, image sides


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: int  # class whose outline is drawn
    texture_class: int  # class whose texture family fills it
    texture: Texture
    center: tuple[float, float]  # (y, x), image sides
    radius: float
    angle: float  # radians
    aspect: float  # width / height stretch of the local frame


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects in instance order (the main object first) and the order they are painted in."""

    label: int
    texture_label: int
    background: Texture
    objects: tuple[SceneObject, ...]
    paint_order: tuple[int, ...]


# ---------------------------------------------------------------- sampling
def _luminance(color) -> float:
    return float(np.dot(color, (0.299, 0.587, 0.114)))


def _object_colors(rng, background_color) -> tuple:
    """Two random colours that differ in brightness (so the texture shows) and whose mean stands
    out from the background (so the outline shows). Rejection sampling stays deterministic."""
    while True:
        first, second = rng.uniform(0.0, 1.0, size=(2, 3))
        mean = (first + second) / 2
        if (abs(_luminance(first) - _luminance(second)) > 0.3
                and np.linalg.norm(mean - background_color) > 0.35):
            return tuple(map(float, first)), tuple(map(float, second))


def family_texture(rng, family: int, colors, center, radius) -> Texture:
    """A texture of `family` with its random parameters (period, phase, jitter, noise seed)."""
    name = TEXTURE_NAMES[family]
    period = float(rng.uniform(*_TEXTURE_PERIOD))
    phase = tuple(map(float, rng.uniform(0.0, 1.0, size=2)))
    noise_seed = int(rng.integers(2**31))
    if name.startswith("stripes"):
        direction = _STRIPE_DIRECTIONS[family] + rng.uniform(-_STRIPE_JITTER, _STRIPE_JITTER)
        # The pattern varies across the lines: its wave direction is the line direction + 90.
        return Texture("stripes", colors, math.radians(direction + 90.0), period, phase, noise_seed)
    if name in ("checker", "dots"):
        return Texture(name, colors, float(rng.uniform(0, np.pi / 2)), period, phase, noise_seed)
    if name in ("blobs", "speckle"):
        return Texture(name, colors, noise_seed=noise_seed, lattice=_NOISE_LATTICE[name])
    if name == "rings":
        return Texture("rings", colors, period=period, phase=phase, center=center)
    return Texture("gradient", colors, angle=float(rng.uniform(0, 2 * np.pi)), center=center,
                   extent=radius)


def _background(rng) -> Texture:
    """A muted base colour with a low-contrast pattern of a random kind."""
    base = rng.uniform(0.15, 0.85, size=3)
    delta = rng.uniform(0.04, 0.11) * rng.choice((-1.0, 1.0), size=3)
    colors = (tuple(map(float, base - delta)), tuple(map(float, base + delta)))
    kind = str(rng.choice(("stripes", "checker", "blobs", "gradient")))
    return Texture(kind, colors, angle=float(rng.uniform(0, 2 * np.pi)),
                   period=float(rng.uniform(0.15, 0.35)),
                   phase=tuple(map(float, rng.uniform(0.0, 1.0, size=2))),
                   noise_seed=int(rng.integers(2**31)), lattice=_NOISE_LATTICE["background"],
                   extent=0.7)


def _object(rng, shape, texture_class, radius, center, background) -> SceneObject:
    bg_mean = np.mean(background.colors, axis=0)
    colors = _object_colors(rng, bg_mean)
    texture = family_texture(rng, texture_class, colors, center, radius)
    return SceneObject(shape, texture_class, texture, center, radius,
                       angle=float(rng.uniform(0, 2 * np.pi)),
                       aspect=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))))


def sample_scene(rng: np.random.Generator, cue_conflict: bool = False) -> Scene:
    """Draw one scene: a main object (the label), 0-2 smaller distractors and a background.

    In a cue-conflict scene the main object has the shape of `label` and the texture of another
    class `texture_label`; distractors are then of classes other than both, so they lend neither
    cue. Distractors painted in front keep clear of the main object's middle, so it stays the
    largest visible thing; distractors behind it may end up hidden (and are then dropped).
    """
    label = texture_label = int(rng.integers(NUM_CLASSES))
    if cue_conflict:  # any other class, uniformly
        texture_label = (label + int(rng.integers(1, NUM_CLASSES))) % NUM_CLASSES
    background = _background(rng)
    radius = float(rng.uniform(*_MAIN_RADIUS))
    center = tuple(map(float, rng.uniform(0.9 * radius, 1 - 0.9 * radius, size=2)))
    main = _object(rng, label, texture_label, radius, center, background)

    count = int(rng.choice(len(_DISTRACTOR_COUNT_PROBS), p=_DISTRACTOR_COUNT_PROBS))
    others = [c for c in range(NUM_CLASSES) if c not in (label, texture_label)]
    objects, behind, in_front = [main], [], []
    for shape in rng.choice(others, size=count, replace=False):
        r = float(rng.uniform(*_DISTRACTOR_RADIUS))
        front = bool(rng.random() < 0.5)
        for _ in range(20):
            c = rng.uniform(r, 1 - r, size=2)
            if not front or np.hypot(*(c - center)) >= 0.8 * radius + 0.3 * r:
                break
        else:
            front = False  # no clear spot found: put it behind the main object instead
        (in_front if front else behind).append(len(objects))
        objects.append(_object(rng, int(shape), int(shape), r, tuple(map(float, c)), background))
    return Scene(label, texture_label, background, tuple(objects), tuple(behind + [0] + in_front))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `split`: independent of every other example."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


# ---------------------------------------------------------------- rendering
def _value_noise(seed: int, lattice: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smooth random field in [0, 1]: uniform values on a lattice, smoothstep-interpolated."""
    values = np.random.default_rng(seed).uniform(0.0, 1.0, size=(lattice + 1, lattice + 1))
    values = values.astype(np.float32)
    gy, gx = np.clip(y, 0, 1) * lattice, np.clip(x, 0, 1) * lattice
    iy, ix = np.minimum(gy.astype(int), lattice - 1), np.minimum(gx.astype(int), lattice - 1)
    fy, fx = gy - iy.astype(gy.dtype), gx - ix.astype(gx.dtype)
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = values[iy, ix] * (1 - fx) + values[iy, ix + 1] * fx
    bottom = values[iy + 1, ix] * (1 - fx) + values[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture_pattern(texture: Texture, y: np.ndarray, x: np.ndarray, pixel: float) -> np.ndarray:
    """Mixing weight in [0, 1] between the texture's two colours at image points (y, x)."""
    cos, sin = math.cos(texture.angle), math.sin(texture.angle)

    def lattice(across: bool) -> np.ndarray:
        """Coordinate in periods along the texture's angle (or across it, rotated by 90)."""
        if across:
            return (x * sin + y * cos) / texture.period + texture.phase[1]
        return (x * cos - y * sin) / texture.period + texture.phase[0]

    kind = texture.kind
    if kind == "stripes":  # soft square wave
        return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * lattice(False)), 0, 1)
    if kind == "checker":
        waves = np.sin(2 * np.pi * lattice(False)) * np.sin(2 * np.pi * lattice(True))
        return np.clip(0.5 + 3.0 * waves, 0, 1)
    if kind == "dots":  # discs of radius 0.3 period on a square lattice, antialiased
        a, b = lattice(False), lattice(True)
        distance = np.hypot(a - np.floor(a) - 0.5, b - np.floor(b) - 0.5) * texture.period
        return np.clip(0.5 - (distance - 0.3 * texture.period) / pixel, 0, 1)
    if kind == "rings":  # concentric around the object's centre
        r = np.hypot(y - texture.center[0], x - texture.center[1]) / texture.period
        return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * (r + texture.phase[0])), 0, 1)
    if kind == "blobs":  # camouflage: thresholded smooth noise
        noise = _value_noise(texture.noise_seed, texture.lattice, y, x)
        return np.clip(0.5 + 4.0 * (noise - 0.5), 0, 1)
    if kind == "speckle":
        return _value_noise(texture.noise_seed, texture.lattice, y, x)
    if kind == "gradient":  # linear ramp across the object
        along = (x - texture.center[1]) * cos - (y - texture.center[0]) * sin
        return np.clip(0.5 + along / (2 * texture.extent), 0, 1)
    raise ValueError(f"unknown texture kind {kind!r}")


def _paint(texture: Texture, y, x, pixel) -> np.ndarray:
    t = _texture_pattern(texture, y, x, pixel)[..., None]
    first, second = (np.asarray(c, np.float32) for c in texture.colors)
    return first + (second - first) * t


def _coverage(obj: SceneObject, y: np.ndarray, x: np.ndarray, pixel: float) -> np.ndarray:
    """Fraction of each pixel the object covers (antialiased from its signed distance)."""
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    dy, dx = (y - obj.center[0]) / obj.radius, (x - obj.center[1]) / obj.radius
    stretch = math.sqrt(obj.aspect)
    u = (dx * cos + dy * sin) / stretch
    v = (-dx * sin + dy * cos) * stretch
    # Local units -> pixels; the smaller scale of the stretched frame bounds the true distance.
    to_pixels = obj.radius * min(stretch, 1 / stretch) / pixel
    distance = shape_sdf(obj.shape, u, v, exact_below=0.5 / to_pixels)
    return np.clip(0.5 - distance * to_pixels, 0.0, 1.0)


def _window(obj: SceneObject, size: int) -> tuple[slice, slice]:
    """Pixel rows and columns that can touch the object (its stretched circumcircle + 1 px)."""
    reach = obj.radius * max(np.sqrt(obj.aspect), 1 / np.sqrt(obj.aspect))
    rows = [int(np.clip(np.floor((obj.center[0] + s * reach) * size) + o, 0, size))
            for s, o in ((-1, -1), (1, 2))]
    cols = [int(np.clip(np.floor((obj.center[1] + s * reach) * size) + o, 0, size))
            for s, o in ((-1, -1), (1, 2))]
    return slice(*rows), slice(*cols)


def render_scene(scene: Scene, image_size: int) -> dict[str, np.ndarray]:
    """Rasterise a scene: 'image' uint8 (S, S, 3), 'mask' uint8 (S, S) visible instance ids,
    'boxes' float32 (n, 4) [ymin, xmin, ymax, xmax] in [0, 1], 'box_labels' int64 (n,).

    Later objects in `scene.paint_order` cover earlier ones. A pixel belongs to the topmost object
    covering at least half of it. Objects left with no visible pixel are dropped and the others
    renumbered in instance order, so ids are 1..n and the main object (never hidden) is id 1.
    Each box is the pixel extent of its instance's visible mask: rows ymin*S .. ymax*S - 1.
    """
    size = image_size
    pixel = 1.0 / size
    # float32 throughout (~15% faster than float64). Scalars stay Python floats (math.cos, not
    # np.cos), since a NumPy float64 scalar would promote every array it touches to float64.
    centers = ((np.arange(size) + 0.5) * pixel).astype(np.float32)
    y, x = np.meshgrid(centers, centers, indexing="ij")
    image = _paint(scene.background, y, x, pixel)
    ids = np.zeros((size, size), np.int32)
    for k in scene.paint_order:
        obj = scene.objects[k]
        rows, cols = _window(obj, size)
        wy, wx = y[rows, cols], x[rows, cols]
        alpha = _coverage(obj, wy, wx, pixel)[..., None]
        region = image[rows, cols]
        image[rows, cols] = region + (_paint(obj.texture, wy, wx, pixel) - region) * alpha
        ids[rows, cols] = np.where(alpha[..., 0] >= 0.5, k + 1, ids[rows, cols])

    mask = np.zeros((size, size), np.uint8)
    boxes, box_labels = [], []
    for k, obj in enumerate(scene.objects):
        rr, cc = np.nonzero(ids == k + 1)
        if rr.size == 0:
            if k == 0:  # sample_scene keeps front objects off its middle, so this is a bug
                raise RuntimeError("the main object of a scene ended up hidden")
            continue
        mask[rr, cc] = len(boxes) + 1
        boxes.append([rr.min(), cc.min(), rr.max() + 1, cc.max() + 1])
        box_labels.append(obj.shape)
    return {
        "image": np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
        "mask": mask,
        "boxes": np.asarray(boxes, np.float32) / np.float32(size),
        "box_labels": np.asarray(box_labels, np.int64),
    }


def make_example(seed: int, split: str, index: int, image_size: int) -> dict[str, np.ndarray]:
    """Example `index` of `split`: the rendered arrays plus 'label', 'texture_label', 'index'."""
    scene = sample_scene(scene_rng(seed, split, index), cue_conflict=split == "cue_conflict")
    example = render_scene(scene, image_size)
    example.update(label=np.int64(scene.label), texture_label=np.int64(scene.texture_label),
                   index=np.int64(index))
    return example
