"""Few-shot splits in memory, N-way K-shot task sampling, and helpers the loaders share.

A split is a `ClassImages`: one uint8 array indexed by (class, sample), so sampling a task
is two integer-array lookups. Sampling follows supervised-reptile exactly (paper notes §1.4):
permute all classes and take the first N, label j is the j-th class chosen, and each class
contributes K distinct samples (a permutation of its samples, first K).
"""
from dataclasses import dataclass

import numpy as np

from reptile_np import checks

PILLOW_MISSING = "Decoding images needs Pillow: pip install 'reptile-np[data]'"


@dataclass(frozen=True, eq=False)
class ClassImages:
    """The images of one split of a few-shot data set, one row per class.

    Attributes:
        images: uint8 array of shape (num_classes, samples_per_class, C, H, W). It may be
            a read-only memory map.
        names: One name per class, such as "Alphabet/character01/rot090".
        scale: Factor that turns the stored integers into float pixels (1/255).
    """

    images: np.ndarray
    names: tuple
    scale: float = 1.0 / 255.0

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 \
                or self.images.ndim != 5:
            raise ValueError(
                "images: expected a uint8 array of shape (classes, samples, C, H, W), got "
                f"{checks.describe(self.images)}.")
        names = tuple(str(name) for name in self.names)
        if len(names) != self.images.shape[0]:
            raise ValueError(
                f"names: expected one name per class ({self.images.shape[0]}), got {len(names)}.")
        checks.number("scale", self.scale, positive=True)
        object.__setattr__(self, "names", names)

    @property
    def num_classes(self):
        """Number of classes in the split."""
        return self.images.shape[0]

    @property
    def samples_per_class(self):
        """Number of images stored for every class."""
        return self.images.shape[1]

    @property
    def image_shape(self):
        """Shape (C, H, W) of one image."""
        return self.images.shape[2:]


def sample_task(split, num_classes, num_shots, rng, dtype=np.float32):
    """Sample one N-way K-shot task from a split (paper notes §1.4).

    Args:
        split: The `ClassImages` to sample from.
        num_classes: N, the number of classes in the task.
        num_shots: K, the number of distinct samples drawn from each class.
        rng: The `numpy.random.Generator` that makes every random choice.
        dtype: Dtype of the returned images, float32 or float64.

    Returns:
        A tuple (x, y). x has shape (N*K, C, H, W), the given dtype and values in [0, 1];
        y is int64 of shape (N*K,). Examples come class by class: the first K have label 0,
        the next K label 1, and so on. Label j belongs to the j-th class chosen, so the
        label-to-class assignment is a fresh random permutation for every task.

    Raises:
        ValueError: naming the argument, for a split that is not a `ClassImages`, N or K
            not an integer from 1 to what the split holds, an ``rng`` that is not a
            Generator, or another dtype.
    """
    if not isinstance(split, ClassImages):
        raise ValueError(f"split: expected a ClassImages, got {checks.describe(split)}.")
    checks.integer("num_classes", num_classes, 1, split.num_classes, "the classes in this split")
    checks.integer("num_shots", num_shots, 1, split.samples_per_class, "the samples per class")
    checks.generator("rng", rng)
    checks.float_dtype("dtype", dtype)
    classes = rng.permutation(split.num_classes)[:num_classes]
    # One independent permutation of the sample indices per chosen class; its first K
    # entries are K distinct samples.
    orders = np.tile(np.arange(split.samples_per_class), (num_classes, 1))
    shots = rng.permuted(orders, axis=1)[:, :num_shots]
    raw = split.images[classes[:, None], shots]  # (N, K, C, H, W) uint8
    x = to_float(raw.reshape((num_classes * num_shots,) + split.image_shape), dtype, split.scale)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), num_shots)
    return x, y


def to_float(raw, dtype, scale=1.0 / 255.0):
    """Float pixels of stored uint8 images, as tasks give them to the networks.

    A lookup table maps each of the 256 stored values to its float pixel, rounded once
    from float64, so 255 becomes exactly 1.0 in any dtype.

    Args:
        raw: uint8 array of any shape.
        dtype: float32 or float64.
        scale: the `ClassImages.scale` factor.

    Returns:
        An array of ``raw``'s shape and the given dtype.
    """
    table = (np.arange(256, dtype=np.float64) * scale).astype(dtype)
    return table[raw]


def split_eval_task(x, y, num_classes):
    """Split a task sampled with K+1 shots into training examples and queries (paper notes §1.5).

    The query set holds the first example of each label, in label order; the training set
    holds the remaining N*K examples in their original order.

    Args:
        x: Task inputs, indexed along the first axis.
        y: Integer labels of shape (len(x),) with values 0..num_classes-1.
        num_classes: N, the number of labels in the task.

    Returns:
        A tuple (train_x, train_y, query_x, query_y); query_y equals arange(num_classes).
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise ValueError(
            f"y: expected integer labels of shape ({len(x)},), got {checks.describe(y)}.")
    checks.integer("num_classes", num_classes, 1, max(len(y) // 2, 1),
                   "half the number of examples")
    if y.size == 0 or y.min() < 0 or y.max() >= num_classes \
            or np.bincount(y, minlength=num_classes).min() < 2:
        raise ValueError(
            f"y: expected every label 0..{num_classes - 1} at least twice (a query plus "
            f"training examples) and no other label, got counts {_label_counts(y)}.")
    query = np.array([np.flatnonzero(y == label)[0] for label in range(num_classes)])
    train = np.ones(len(y), dtype=bool)
    train[query] = False
    return x[train], y[train], x[query], y[query]


def require_pillow():
    """Import Pillow on demand, since it is an optional extra.

    Returns:
        The `PIL.Image` module.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(PILLOW_MISSING) from None
    return Image


def _label_counts(y):
    labels, counts = np.unique(y, return_counts=True)
    return dict(zip(labels.tolist(), counts.tolist()))
