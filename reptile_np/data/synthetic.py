"""Procedurally drawn glyphs: an Omniglot-like data set that needs no download.

Each class is a random pen path (a polyline through 3 to 5 random points); each sample
redraws that path with its corners moved by up to one pixel, the whole glyph shifted by a
few pixels, and a few pixels flipped. Samples of a class therefore differ, yet stay closer
to each other than to other classes, so a few-shot learner can make progress on them.
Everything is vectorised NumPy: 100 classes x 20 samples take a few milliseconds.
"""
import numpy as np

from reptile_np import checks
from reptile_np.data.tasks import ClassImages

_MIN_VERTICES = 3
_MAX_VERTICES = 5
_FLIP_PROBABILITY = 0.01


def make_synthetic(num_classes, samples_per_class, size=28, seed=0, channels=1):
    """Draw a synthetic few-shot data set of glyphs.

    Like Omniglot, the background is 255 (1.0 after scaling) and the ink 0.

    Args:
        num_classes: Number of glyph classes.
        samples_per_class: Drawings per class.
        size: Height and width of the square images, at least 16.
        seed: Seed of the generator; the same seed gives the same array.
        channels: Colour channels; the grey glyph is repeated in each.

    Returns:
        A `ClassImages` with images of shape (num_classes, samples_per_class, channels,
        size, size) and names "synthetic/glyph0000", ...
    """
    for name, value, low in (("num_classes", num_classes, 1),
                             ("samples_per_class", samples_per_class, 1),
                             ("size", size, 16), ("channels", channels, 1)):
        checks.integer(name, value, low)
    rng = np.random.default_rng(seed)
    # Stroke width, shift and corner jitter grow with the image, so a glyph looks the same
    # at 28x28 and at 84x84.
    width = max(2, round(size / 14))
    shift = max(2, round(size / 14))
    jitter = max(1, round(size / 28))
    margin = shift + jitter + width
    vertices = rng.integers(margin, size - margin, size=(num_classes, _MAX_VERTICES, 2))
    # Classes with fewer corners repeat their last one: a zero-length stroke draws nothing new.
    counts = rng.integers(_MIN_VERTICES, _MAX_VERTICES + 1, size=num_classes)
    last = np.minimum(np.arange(_MAX_VERTICES), counts[:, None] - 1)
    vertices = np.take_along_axis(vertices, last[..., None], axis=1)

    shape = (num_classes, samples_per_class)
    corners = vertices[:, None] + rng.integers(-jitter, jitter + 1, size=shape + vertices.shape[1:])
    corners = corners + rng.integers(-shift, shift + 1, size=shape + (1, 2))
    ink = _draw_polylines(corners.reshape((-1,) + corners.shape[2:]), size, width)
    ink ^= rng.random(ink.shape) < _FLIP_PROBABILITY
    images = np.where(ink, np.uint8(0), np.uint8(255)).reshape(shape + (1, size, size))
    images = np.repeat(images, channels, axis=2)
    names = tuple(f"synthetic/glyph{i:04d}" for i in range(num_classes))
    return ClassImages(images, names)


def load_synthetic(num_train_classes=200, num_test_classes=100, samples_per_class=20,
                   size=28, seed=0, channels=1):
    """Make train and test splits of synthetic glyphs with disjoint classes.

    Args:
        num_train_classes: Classes in the "train" split.
        num_test_classes: Classes in the "test" split.
        samples_per_class: Drawings per class.
        size: Height and width of the images.
        seed: Seed of the generator.
        channels: Colour channels.

    Returns:
        A dict with keys "train" and "test" of `ClassImages`.
    """
    for name, value in (("num_train_classes", num_train_classes),
                        ("num_test_classes", num_test_classes)):
        checks.integer(name, value)
    # One draw split in two: the glyphs are independent, so the classes are disjoint.
    full = make_synthetic(num_train_classes + num_test_classes, samples_per_class, size,
                          seed, channels)
    return {
        "train": ClassImages(full.images[:num_train_classes], full.names[:num_train_classes]),
        "test": ClassImages(full.images[num_train_classes:], full.names[num_train_classes:]),
    }


def _draw_polylines(corners, size, width):
    """Rasterise polylines into boolean ink masks.

    Args:
        corners: int array (M, V, 2) of (row, column) corners of M polylines.
        size: Side of the square canvas.
        width: Stroke width in pixels.

    Returns:
        bool array (M, size, size), True where there is ink.
    """
    count = len(corners)
    # `size` points per segment are at most 1.5 pixels apart, and the stroke is at least
    # 2 pixels wide, so the dilated line has no gaps.
    t = np.linspace(0.0, 1.0, size)[:, None]  # (P, 1)
    start, end = corners[:, :-1, None, :], corners[:, 1:, None, :]  # (M, V-1, 1, 2)
    points = np.rint(start + t * (end - start)).astype(np.intp).reshape(count, -1, 2)
    points = np.clip(points, 0, size - 1)
    ink = np.zeros((count, size, size), dtype=bool)
    ink[np.arange(count)[:, None], points[..., 0], points[..., 1]] = True
    # Square brush as a separable dilation: widen rows, then columns.
    wide = ink.copy()
    for offset in range(1, width):
        wide[:, offset:, :] |= ink[:, :-offset, :]
    ink = wide.copy()
    for offset in range(1, width):
        ink[:, :, offset:] |= wide[:, :, :-offset]
    return ink
