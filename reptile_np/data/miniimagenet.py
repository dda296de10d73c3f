"""Mini-ImageNet: decode a local copy once into one memory-mappable .npy per split.

The images cannot be redistributed, so the loader reads what the user has, in either of
the two common layouts:

* folders: `<data_dir>/{train,val,test}/<wnid>/*.jpg` (also .jpeg/.png, any case);
* split CSVs (Ravi & Larochelle): `<data_dir>/images/<filename>` plus `train.csv`,
  `val.csv` and `test.csv` with the header `filename,label`, in `data_dir` or `csv_dir`.

Each image goes through the reference pipeline (REFERENCE c): resize to 84x84 with NEAREST
(the default filter of the Pillow version supervised-reptile pinned), then convert to RGB,
kept as uint8 in channels-first order. The full train split is 64*600*3*84*84 bytes
(813 MB), hence one .npy per split that is memory-mapped rather than read into RAM.
"""
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from reptile_np.data.tasks import ClassImages, require_pillow
from reptile_np.files import atomic_path, ensure_writable_dir
from reptile_np.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
EXTENSIONS = (".jpg", ".jpeg", ".png")
CACHE_PREFIX = "miniimagenet_84x84_v1"


def load_miniimagenet(data_dir, cache_dir=None, csv_dir=None, mmap=True):
    """Load the train, val and test splits of Mini-ImageNet, decoding them on first use.

    The first call decodes every image and writes `<prefix>_<split>.npy` with a small
    `<prefix>_<split>.json` of class names; later calls read only these and need no Pillow.
    The JSON is written last, so a split without it counts as not cached and is rebuilt.
    Delete both files to rebuild a split after changing the images.

    Args:
        data_dir: Root of the images, in the folder or the split-CSV layout.
        cache_dir: Directory of the cache files; defaults to `data_dir`.
        csv_dir: Directory of `train.csv`, `val.csv` and `test.csv`; giving it selects the
            CSV layout. Without it the CSV layout is used when `data_dir` holds `train.csv`.
        mmap: Memory-map the cached arrays read-only instead of reading them into RAM.

    Returns:
        A dict with keys "train", "val" and "test" of `ClassImages` with images of shape
        (classes, images per class, 3, 84, 84).
    """
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir
    if csv_dir is None and (data_dir / "train.csv").is_file():
        csv_dir = data_dir
    result = {}
    for split in SPLITS:
        npy = cache_dir / f"{CACHE_PREFIX}_{split}.npy"
        meta = cache_dir / f"{CACHE_PREFIX}_{split}.json"
        if not meta.exists():
            files = _list_csv_split(data_dir, Path(csv_dir), split) if csv_dir is not None \
                else _list_folder_split(data_dir, split)
            _check_equal_counts(files, split)
            ensure_writable_dir(cache_dir, "cache_dir")
            _build_cache(files, npy, meta)
        result[split] = _read_cache(npy, meta, mmap)
    return result


def _list_folder_split(data_dir, split):
    root = data_dir / split
    if not root.is_dir():
        raise DataError(
            f"data_dir: expected {root}/<wnid>/*.jpg, or images/ plus {split}.csv (see "
            f"csv_dir), in {data_dir}, got neither.")
    return {
        folder.name: sorted(path for path in folder.iterdir()
                            if path.is_file() and path.suffix.lower() in EXTENSIONS)
        for folder in sorted(root.iterdir()) if folder.is_dir()
    }


def _list_csv_split(data_dir, csv_dir, split):
    table = csv_dir / f"{split}.csv"
    if not table.is_file():
        raise DataError(f"csv_dir: expected {split}.csv in {csv_dir}, got no such file.")
    with open(table, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    if not rows or rows[0] != ["filename", "label"] or any(len(row) != 2 for row in rows[1:]):
        raise DataError(
            f"csv_dir: expected {table} to have the header 'filename,label' and two columns "
            f"per row, got first row {rows[0] if rows else 'none'}.")
    files = {}
    for filename, label in rows[1:]:
        files.setdefault(label, []).append(data_dir / "images" / filename)
    missing = [path for paths in files.values() for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"data_dir: expected the {len(rows) - 1} images listed in {table} under "
            f"{data_dir / 'images'}, got {len(missing)} missing, such as {missing[0].name}.")
    return {label: sorted(paths) for label, paths in sorted(files.items())}


def _check_equal_counts(files, split):
    """Require the same number (at least 1) of images in every class, naming the odd ones."""
    counts = {label: len(paths) for label, paths in files.items()}
    if not counts:
        raise DataError(f"data_dir: expected class folders in the {split} split, got none.")
    usual = Counter(counts.values()).most_common(1)[0][0]
    odd = {label: count for label, count in counts.items() if count != usual or count == 0}
    if odd:
        listed = ", ".join(f"{label} has {count}" for label, count in sorted(odd.items())[:5])
        raise DataError(
            f"data_dir: expected every class of the {split} split to hold the same number of "
            f"images ({usual} in most), got {listed}.")


def _build_cache(files, npy, meta):
    image_module = require_pillow()
    labels = sorted(files)
    shape = (len(labels), len(files[labels[0]]), 3, IMAGE_SIZE, IMAGE_SIZE)
    with atomic_path(npy) as tmp:
        # Decode straight into the file, so the 813 MB train split never sits in RAM twice.
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, label in enumerate(labels):
            for j, path in enumerate(files[label]):
                images[i, j] = _decode(image_module, path)
        images.flush()
        del images
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"names": labels, "shape": list(shape)}), encoding="utf-8")


def _decode(image_module, path):
    try:
        with image_module.open(path) as image:
            small = image.resize((IMAGE_SIZE, IMAGE_SIZE), image_module.Resampling.NEAREST)
            pixels = np.asarray(small.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        # Truncated or empty JPEGs were the usual result of the dead download URL.
        raise DataError(
            f"data_dir: expected {path} to be a readable image, got an error ({exc}); "
            "replace the file.") from None
    return pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _read_cache(npy, meta, mmap):
    advice = f"delete {npy.name} and {meta.name} from {npy.parent} and load again"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        names, shape = tuple(info["names"]), tuple(info["shape"])
        images = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"cache_dir: expected a readable Mini-ImageNet cache in {npy.name} and "
            f"{meta.name}, got an error ({exc}); {advice}.") from None
    if images.dtype != np.uint8 or images.shape != shape or len(names) != shape[0]:
        raise DataError(
            f"cache_dir: expected {npy.name} to hold uint8 images of shape {shape} with "
            f"{len(names)} class names, got {images.dtype} {images.shape}; {advice}.")
    return ClassImages(images, names)
