"""Mini-ImageNet: decode a local copy once into one memory-mappable .npy per split.

The images cannot be redistributed, so the loader reads what the user has, in either of
the two common layouts:

* folders: `<data_dir>/{train,val,test}/<wnid>/*.jpg` (also .jpeg/.png, any case);
* split CSVs (Ravi & Larochelle): `<data_dir>/images/<filename>` plus `train.csv`,
  `val.csv` and `test.csv` with the header `filename,label`, in `data_dir` or `csv_dir`.

Each image goes through the pipeline of supervised-reptile (supervised_reptile/
miniimagenet.py, `_ImageNetClass._read_image`): resize to 84x84 with NEAREST (the default
filter of the Pillow version it pinned), then convert to RGB, kept as uint8 in
channels-first order. The full train split is 64*600*3*84*84 bytes (813 MB), hence one
.npy per split that is memory-mapped rather than read into RAM.

The cache of one source is `<prefix>_<key>_{train,val,test}.npy` plus `<prefix>_<key>.json`,
which records the fingerprint of the images (see `reptile_np.data.cache`) and is written
last: the cache counts only if the JSON exists and matches the images as they are now.
"""
import contextlib
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from reptile_np.data import cache
from reptile_np.data.tasks import ClassImages, require_pillow
from reptile_np.files import atomic_path
from reptile_np.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
EXTENSIONS = (".jpg", ".jpeg", ".png")
CACHE_PREFIX = f"miniimagenet_{IMAGE_SIZE}x{IMAGE_SIZE}_v2"
HINT = "see the README's Mini-ImageNet section for how to get the images"
_LAYOUTS = ("train/, val/ and test/ folders of <wnid>/*.jpg, or images/ with train.csv, "
            "val.csv and test.csv")


def load_miniimagenet(data_dir, cache_dir=None, csv_dir=None, mmap=True, *, flag="--data-dir"):
    """Load the train, val and test splits of Mini-ImageNet, decoding them on first use.

    Every call lists the images and checks the layout (every class of a split holding the
    same number of images); the cache is used only if it was decoded from exactly these
    files (same paths, sizes and mtimes), and then no Pillow is needed. Otherwise all three
    splits are decoded and the cache is replaced only once every image decoded: a failed
    build leaves no cache behind.

    Args:
        data_dir: Root of the images, in the folder or the split-CSV layout.
        cache_dir: Directory of the caches; defaults to
            `cache.default_cache_dir("miniimagenet")`.
        csv_dir: Directory of `train.csv`, `val.csv` and `test.csv`; giving it selects the
            CSV layout. Without it the CSV layout is used when `data_dir` holds `train.csv`.
        mmap: Memory-map the cached arrays read-only instead of reading them into RAM.
        flag: The command-line flag `data_dir` came from, named in error messages.

    Returns:
        A dict with keys "train", "val" and "test" of `ClassImages` with images of shape
        (classes, images per class, 3, 84, 84).

    Raises:
        DataError: The layout is missing or incomplete, an image is unreadable, or the
            cache cannot be written.
    """
    source = cache.source_dir(data_dir, flag, HINT)
    where = f"{flag} {source}"
    tables = {}
    if csv_dir is not None or (source / "train.csv").is_file():
        csv_where = f"csv_dir {csv_dir}" if csv_dir is not None else where
        csv_dir = Path(csv_dir).resolve() if csv_dir is not None else source
        tables = {split: csv_dir / f"{split}.csv" for split in SPLITS}
        files = {split: _list_csv_split(source, tables[split], where, csv_where)
                 for split in SPLITS}
        layout = {"layout": "csv", "csv_dir": str(csv_dir)}
    else:
        files = _list_folder_splits(source, where)
        layout = {"layout": "folders"}
    for split, classes in files.items():
        check_equal_counts(classes, split, where)
    images = [path for split in SPLITS for label in sorted(files[split])
              for path in files[split][label]]
    stamp = cache.fingerprint(source, list(tables.values()) + images, image_size=IMAGE_SIZE,
                              **layout)
    cache_dir = Path(cache_dir) if cache_dir is not None \
        else cache.default_cache_dir("miniimagenet")
    name = cache.cache_name(CACHE_PREFIX, source, **layout)
    meta = cache_dir / f"{name}.json"
    arrays = {split: cache_dir / f"{name}_{split}.npy" for split in SPLITS}
    result = read_class_cache(meta, arrays, stamp, mmap)
    if result is None:
        build_class_cache(files, meta, arrays, stamp, where)
        result = read_class_cache(meta, arrays, stamp, mmap)
    return result


def _list_folder_splits(source, where):
    """Return {split: {wnid: sorted image paths}} from the `<split>/<wnid>/` folders."""
    roots = {split: source / split for split in SPLITS}
    if not any(root.is_dir() for root in roots.values()):
        raise DataError(f"{where} holds no Mini-ImageNet images: expected {_LAYOUTS}; {HINT}.")
    files = {}
    for split, root in roots.items():
        if not root.is_dir():
            raise DataError(f"{where} has no {split}/ folder: expected {_LAYOUTS}.")
        files[split] = {
            folder.name: sorted(path for path in folder.iterdir()
                                if path.is_file() and path.suffix.lower() in EXTENSIONS)
            for folder in sorted(root.iterdir()) if folder.is_dir()
        }
    return files


def _list_csv_split(source, table, where, csv_where):
    """Return {label: sorted image paths} of one split from its CSV table."""
    if not table.is_file():
        raise DataError(f"{csv_where} has no {table.name}: expected {_LAYOUTS}.")
    with open(table, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    if not rows or rows[0] != ["filename", "label"] or any(len(row) != 2 for row in rows[1:]):
        first = cache.shorten(",".join(rows[0])) if rows else "nothing"
        raise DataError(
            f"{csv_where}: {table.name} should start with the header 'filename,label' and "
            f"have two columns per row, but starts with {first!r}.")
    files = {}
    for filename, label in rows[1:]:
        files.setdefault(label, []).append(source / "images" / filename)
    missing = [path for paths in files.values() for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{where}: images/ lacks {len(missing):,} of the {len(rows) - 1:,} images listed "
            f"in {table.name}, such as {cache.shorten(missing[0].name)}.")
    return {label: sorted(paths) for label, paths in sorted(files.items())}


def check_equal_counts(files, split, where):
    """Require the same number (at least 1) of images in every class, naming the odd ones."""
    counts = {label: len(paths) for label, paths in files.items()}
    if not counts:
        raise DataError(f"{where}: the {split} split holds no classes.")
    usual = Counter(counts.values()).most_common(1)[0][0]
    odd = sorted((label, count) for label, count in counts.items()
                 if count != usual or count == 0)
    if odd:
        listed = cache.listing(f"{label} has {count}" for label, count in odd)
        raise DataError(
            f"{where}: every class of the {split} split needs the same number of images "
            f"({usual} in most), but {listed}.")


def build_class_cache(files, meta, arrays, stamp, where, image_size=IMAGE_SIZE, channels=3):
    """Decode all splits into `arrays`, then write `meta`; on failure leave none of them.

    Each image is resized to `image_size` squared and converted to RGB (`channels` 3) or
    grayscale (1); `reptile_np.data.folder` decodes the user's own folders with it too.
    """
    image_module = require_pillow()
    cache.prepare_dir(meta.parent, stale=[meta, *arrays.values()])
    info = {"fingerprint": stamp, "splits": {}}
    try:
        with cache.reporting_write_errors(meta.parent), contextlib.ExitStack() as stack:
            # Every split stays at its temporary name until all of them decoded, so a bad
            # image in the test split cannot leave a train split behind.
            for split in arrays:
                labels = sorted(files[split])
                shape = (len(labels), len(files[split][labels[0]]), channels, image_size,
                         image_size)
                tmp = stack.enter_context(atomic_path(arrays[split]))
                # Decode straight into the file, so the 813 MB train split never sits in
                # RAM twice.
                images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                for i, label in enumerate(labels):
                    for j, path in enumerate(files[split][label]):
                        images[i, j] = _decode(image_module, path, where, image_size, channels)
                images.flush()
                del images
                info["splits"][split] = {"names": labels, "shape": list(shape)}
            stack.close()  # moves the three arrays into place
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps(info), encoding="utf-8")
    except BaseException:
        for path in arrays.values():
            path.unlink(missing_ok=True)
        raise


def _decode(image_module, path, where, image_size=IMAGE_SIZE, channels=3):
    try:
        with image_module.open(path) as image:
            return image_pixels(image_module, image, image_size, channels)
    except (OSError, ValueError) as exc:
        # Truncated or empty JPEGs were the usual result of the dead download URL.
        raise DataError(
            f"{where}: {path} is not a readable image ({exc}); replace the file.") from None


def image_pixels(image_module, image, image_size=IMAGE_SIZE, channels=3):
    """The stored pixels of one open Pillow image: supervised-reptile's pipeline.

    Resize to `image_size` squared with NEAREST, then convert to RGB (`channels` 3) or
    grayscale (1). `reptile-np predict` reads a user's images with it too.

    Returns:
        uint8 array of shape (channels, image_size, image_size).

    Raises:
        OSError, ValueError: Pillow cannot decode the image.
    """
    small = image.resize((image_size, image_size), image_module.Resampling.NEAREST)
    pixels = np.asarray(small.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    # (H, W, C) -> (C, H, W); a grayscale image comes as (H, W).
    return pixels.reshape(image_size, image_size, channels).transpose(2, 0, 1)


def read_class_cache(meta, arrays, stamp, mmap):
    """Return the cached splits, or None if absent, unreadable or built from other files."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info["fingerprint"] != stamp:
            return None
        result = {}
        for split in arrays:
            names = tuple(info["splits"][split]["names"])
            shape = tuple(info["splits"][split]["shape"])
            images = np.load(arrays[split], mmap_mode="r" if mmap else None, allow_pickle=False)
            if images.dtype != np.uint8 or images.shape != shape or len(names) != shape[0]:
                return None
            result[split] = ClassImages(images, names)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result
