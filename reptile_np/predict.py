"""``reptile-np predict``: adapt a trained checkpoint to your own images and classify others.

This is one evaluation task (paper notes §1.5, `reptile_np.evaluate`) on images you give
instead of images drawn from a split:

1. ``--support DIR`` holds one folder per class, N folders of K images each (N is the
   checkpoint's number of classes, ``--classes`` of its training; K any number, the same
   for every class). Class j is the j-th folder in sorted order, and the support set
   x, y of shapes (N*K, C, H, W), (N*K,) lists the classes one after another, as a sampled
   task does.
2. Every image is read as the checkpoint's data set reads its own: resized to the
   network's input side with NEAREST and converted to its channels (supervised-reptile's
   pipeline, `reptile_np.data.miniimagenet.image_pixels`), and its stored values 0..255
   turned into pixels in [0, 1] in theta's dtype (`reptile_np.data.tasks.to_float`). For
   the Omniglot network (1 x 28 x 28) the 1-bit PNGs of the Omniglot release come out
   exactly as the Omniglot loader stores them: white background 1.0, ink 0.0, no
   inversion; so draw dark strokes on white.
3. Adapt: ``eval_iters`` inner steps of ``eval_batch`` support examples, the checkpoint's
   evaluation settings, from theta and the inner optimiser's saved state (Adam's m, v, t),
   exactly as evaluation adapts to a task (`reptile_np.evaluate.adapt`); the mini-batches
   come from ``numpy.random.default_rng(seed)``, so a seed gives the same predictions.
4. Classify the M query images (``--query DIR``: images, or class folders named like the
   support's, which also gives the accuracy) under the checkpoint's protocol or the one
   asked for: transductive, all M queries in one batch (they share BatchNorm's
   statistics); otherwise each query in a batch of the N*K support images plus itself.
   The probabilities are the softmax of the logits, (M, N).

Refused, each with one message naming the flag: a missing checkpoint, or a released one
whose file is not the released one (`reptile_np.release.verify_release`); a support
folder without N class folders or with unequal numbers of images per class; an
unreadable image; an image smaller than the network's input (it would be enlarged, as no
Omniglot or Mini-ImageNet image ever was: a thumbnail given by mistake); a colour image
for a grayscale network (its channels do not match the network's, and converting it
silently would hide the mistake). A grayscale image for an RGB network is taken as RGB,
as the Mini-ImageNet loader takes the grayscale photos of ImageNet.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.folder import list_class_folders, list_images
from .data.miniimagenet import check_equal_counts, image_pixels
from .data.tasks import require_pillow, to_float
from .errors import DataError
from .evaluate import adapt, query_logits
from .losses import softmax
from .meta import minibatches
from .release import load_trained


@dataclass(frozen=True)
class Predictions:
    """The classes predicted for the query images.

    Attributes:
        paths: the query images, in the order of the other attributes.
        classes: the class names, the support's folders in sorted order (label j is
            ``classes[j]``).
        probabilities: float array (queries, classes), the softmax of the network's logits.
        labels: the true label of each query when ``--query`` has class folders, else None.
    """

    paths: tuple
    classes: tuple
    probabilities: np.ndarray
    labels: np.ndarray = None

    @property
    def predicted(self):
        """The predicted label of each query (the most probable class)."""
        return np.argmax(self.probabilities, axis=1)

    @property
    def accuracy(self):
        """The fraction of queries predicted right, or None without true labels."""
        return None if self.labels is None else float(np.mean(self.predicted == self.labels))


def predict(checkpoint_dir, support_dir, query_dir, seed=0, transductive=None):
    """Adapt a trained checkpoint to the support images and classify the query images.

    Args:
        checkpoint_dir: a directory that ``reptile-np train`` wrote, or a released
            ``checkpoints/<name>`` (verified by its SHA-256 first).
        support_dir: N class folders (N: the checkpoint's classes) of K images each.
        query_dir: images to classify, or class folders named like the support's.
        seed: seeds the adaptation's mini-batches.
        transductive: the protocol (see the module docstring); None: the checkpoint's.

    Returns:
        `Predictions`.

    Raises:
        ValueError: naming ``--checkpoint``, ``--support`` or ``--query`` (DataError for a
            folder's content); see the module docstring.
        ImportError: Pillow (the ``data`` extra) is missing.
    """
    model, theta, optimizer, config, _ = load_trained(checkpoint_dir)
    if transductive is None:
        transductive = config.transductive
    image_module = require_pillow()
    support, support_where = _folder(support_dir, "--support")
    classes = list_class_folders(support, support_where)
    if len(classes) != config.num_classes:
        raise DataError(f"{support_where} has {len(classes)} class folders, but the checkpoint's "
                        f"network tells {config.num_classes} classes apart; give exactly "
                        f"{config.num_classes}.")
    check_equal_counts(classes, "support", support_where)
    names = tuple(classes)
    support_paths = [path for name in names for path in classes[name]]
    support_x = _read_images(image_module, support_paths, model.input_shape, theta.dtype,
                             support_where)
    support_y = np.repeat(np.arange(len(names)), len(classes[names[0]]))
    query_paths, labels, query_where = _list_queries(query_dir, names)
    query_x = _read_images(image_module, query_paths, model.input_shape, theta.dtype,
                           query_where)

    batches = minibatches(len(support_y), config.eval_batch_size, config.eval_iters,
                          np.random.default_rng(seed), config.replacement)
    phi = adapt(model, theta, optimizer, support_x, support_y, batches,
                weight_decay=config.weight_decay)
    logits = query_logits(model, phi, support_x, query_x, transductive)
    return Predictions(tuple(query_paths), names, softmax(logits), labels)


def _folder(directory, flag):
    """The folder a flag names, as given (its images are printed as paths inside it), and
    how messages name it (``--query DIR``)."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise DataError(f"{flag} {path} is not a folder"
                        f"{'' if path.exists() else ' (it does not exist)'}.")
    return path, f"{flag} {path}"


def _list_queries(query_dir, names):
    """The query images, their true labels (class folders) or None, and ``--query DIR``."""
    root, where = _folder(query_dir, "--query")
    folders = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
    if not folders:
        return list_images(root, where, "the query folder"), None, where
    files = [path for path in root.iterdir() if path.is_file() and not path.name.startswith(".")]
    if files:
        raise DataError(f"{where} holds both images ({files[0].name}) and class folders "
                        f"({folders[0].name}); give one or the other.")
    classes = list_class_folders(root, where)
    unknown = sorted(set(classes) - set(names))
    if unknown:
        raise DataError(f"{where}: the class folder {unknown[0]} is not one of the support's "
                        f"classes ({', '.join(names)}).")
    paths = [path for name in classes for path in classes[name]]
    labels = np.array([names.index(name) for name in classes for _ in classes[name]])
    return paths, labels, where


def _read_images(image_module, paths, input_shape, dtype, where):
    """(len(paths), C, H, W) float pixels of the images, read as the module docstring says."""
    pixels = np.stack([_read_image(image_module, path, input_shape, where) for path in paths])
    return to_float(pixels, dtype)


def _read_image(image_module, path, input_shape, where):
    """One image's uint8 (C, H, W) pixels for a network of ``input_shape`` (C, H, H)."""
    channels, side = input_shape[0], input_shape[1]
    try:
        with image_module.open(path) as image:
            width, height = image.size
            # As RGB first: a grayscale image's three channels are equal, and each is the
            # very grayscale conversion (Pillow's weights sum to exactly 1), so one read
            # both checks for colour and gives the pixels.
            rgb = image_pixels(image_module, image, side, 3)
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: {path} is not a readable image ({exc}).") from None
    if min(width, height) < side:
        raise DataError(f"{where}: {path} is {width}x{height} pixels, smaller than the "
                        f"{side}x{side} the checkpoint's network reads; give images at least "
                        f"{side} pixels a side.")
    if channels == 3:
        return rgb
    if not np.array_equal(rgb, np.broadcast_to(rgb[:1], rgb.shape)):
        raise DataError(f"{where}: {path} is in colour, but the checkpoint's network reads "
                        f"grayscale images (1 channel); convert it to grayscale.")
    return rgb[:1]


# --------------------------------------------------------------------------- command line

def add_predict_parser(subparsers):
    from .cli import add_threads_flag
    parser = subparsers.add_parser(
        "predict",
        help="adapt a trained checkpoint to your own N-way K-shot images, classify others",
        description="Adapt the checkpoint to the support images (one folder per class, as "
                    "many classes as it was trained for, the same number of images in "
                    "each) with its evaluation settings, then print each query image's "
                    "predicted class and probability (and the accuracy, when --query holds "
                    "class folders). Needs Pillow (the data extra).")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="checkpoint directory: one reptile-np train wrote, or a released "
                             "checkpoints/<name>")
    parser.add_argument("--support", required=True, metavar="DIR",
                        help="folder of class folders of images: the examples to adapt to")
    parser.add_argument("--query", required=True, metavar="DIR",
                        help="folder of images to classify, or of class folders named like "
                             "the support's (then the accuracy is printed too)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the adaptation's mini-batches (default: 0)")
    parser.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=None,
                        help="classify the queries together (BatchNorm statistics shared); "
                             "default: the checkpoint's protocol")
    add_threads_flag(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args):
    result = predict(args.checkpoint, args.support, args.query, args.seed, args.transductive)
    width = max(len(str(path)) for path in result.paths)
    name_width = max(len(name) for name in result.classes)
    for path, label, row in zip(result.paths, result.predicted, result.probabilities):
        print(f"{str(path):<{width}}  {result.classes[label]:<{name_width}}  {row[label]:.3f}")
    if result.labels is not None:
        correct = int(np.sum(result.predicted == result.labels))
        print(f"accuracy: {correct}/{len(result.labels)} = {100 * result.accuracy:.1f}%")
    return 0
