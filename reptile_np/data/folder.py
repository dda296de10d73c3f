"""Your own few-shot data set: one folder of images per class, per split.

The layout is `<data_dir>/{train,val,test}/<class>/*.{png,jpg,jpeg}` (any case): train/ and
test/ are required, val/ is optional. Every class of a split must hold the same number of
images, since a split is one (classes, images per class, C, H, W) array. Hidden files
(names starting with ".") are skipped; any other file that is not a .png/.jpg/.jpeg is an
error, so nothing the user put in a class folder is silently left out.

Images of any size go through the Mini-ImageNet pipeline of supervised-reptile
(supervised_reptile/miniimagenet.py, `_ImageNetClass._read_image`): resize to
`image_size` squared with NEAREST, then convert to grayscale (`channels` 1) or RGB (3),
kept as uint8 in channels-first order. The cache follows the rules of
`reptile_np.data.cache`: named by the source directory and the decoding parameters, used
only while its fingerprint matches the images as they are now.
"""
from pathlib import Path

from reptile_np.data import cache
from reptile_np.data.miniimagenet import (EXTENSIONS, build_class_cache, check_equal_counts,
                                          read_class_cache)
from reptile_np.errors import DataError

REQUIRED_SPLITS = ("train", "test")
OPTIONAL_SPLITS = ("val",)
CACHE_PREFIX = "folder_v1"
HINT = "pass the folder that holds train/ and test/ (and optionally val/) class folders"


def load_folder(data_dir, image_size=28, channels=1, cache_dir=None, mmap=True, *,
                flag="--data-dir"):
    """Load the train, test and (if present) val splits of a folder data set.

    Every call lists the images and checks the layout; the cache is used only if it was
    decoded from exactly these files with the same `image_size` and `channels`, and then
    no Pillow is needed. Otherwise every split is decoded, and a failed build leaves no
    cache behind.

    Args:
        data_dir: Root holding `train/<class>/`, `test/<class>/` and optionally `val/<class>/`.
        image_size: Side in pixels of the square images after resizing (at least 1).
        channels: 1 (grayscale) or 3 (RGB).
        cache_dir: Directory of the caches; defaults to `cache.default_cache_dir("folder")`.
        mmap: Memory-map the cached arrays read-only instead of reading them into RAM.
        flag: The command-line flag `data_dir` came from, named in error messages.

    Returns:
        A dict with keys "train", "test" and, if `data_dir` has val/, "val", of
        `ClassImages` with images of shape (classes, images per class, channels,
        image_size, image_size).

    Raises:
        ValueError: `image_size` or `channels` is out of range.
        DataError: train/ or test/ is missing, a split has no class folders, a class
            folder is empty or holds a file that is not an image, the classes of a split
            hold different numbers of images, an image is unreadable, or the cache cannot
            be written.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive integer, got {image_size!r}.")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}.")
    source = cache.source_dir(data_dir, flag, HINT)
    where = f"{flag} {source}"
    files = _list_splits(source, where)
    for split, classes in files.items():
        check_equal_counts(classes, split, where)
    images = [path for split in files for label in sorted(files[split])
              for path in files[split][label]]
    params = {"image_size": image_size, "channels": channels, "splits": list(files)}
    stamp = cache.fingerprint(source, images, **params)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir("folder")
    name = cache.cache_name(CACHE_PREFIX, source, image_size=image_size, channels=channels)
    meta = cache_dir / f"{name}.json"
    arrays = {split: cache_dir / f"{name}_{split}.npy" for split in files}
    result = read_class_cache(meta, arrays, stamp, mmap)
    if result is None:
        # A val split that disappeared since the last build leaves its array behind.
        stale = [cache_dir / f"{name}_{split}.npy" for split in OPTIONAL_SPLITS
                 if split not in files]
        cache.prepare_dir(cache_dir, stale=stale)
        build_class_cache(files, meta, arrays, stamp, where, image_size, channels)
        result = read_class_cache(meta, arrays, stamp, mmap)
    return result


def _list_splits(source, where):
    """Return {split: {class: sorted image paths}} for the splits present, checked."""
    files = {}
    for split in (*REQUIRED_SPLITS, *OPTIONAL_SPLITS):
        root = source / split
        if not root.is_dir():
            if split in REQUIRED_SPLITS:
                raise DataError(f"{where} has no {split}/ folder: expected "
                                f"train/, test/ and optionally val/, each of <class>/ folders "
                                f"of .png/.jpg/.jpeg images.")
            continue
        files[split] = list_class_folders(root, where, f"{split}/")
    return files


def list_class_folders(root, where, prefix=""):
    """Return {class: sorted image paths} of the class folders in `root`, checked.

    Files directly in `root` are not looked at; every class folder must hold images only
    (see `list_images`). `reptile-np predict` lists its support and query folders with it.

    Args:
        root: The folder of class folders.
        where: The flag and folder the messages name first ("--data-dir DIR").
        prefix: How the messages name `root` inside it ("train/"); "" when `root` is it.

    Raises:
        DataError: `root` holds no class folder, or a class folder is empty or holds
            something that is not a .png/.jpg/.jpeg image.
    """
    classes = {folder.name: list_images(folder, where, f"the class folder {prefix}{folder.name}")
               for folder in sorted(path for path in root.iterdir() if path.is_dir())}
    if not classes:
        raise DataError(f"{where}: {prefix} holds no class folders." if prefix
                        else f"{where} holds no class folders.")
    return classes


def list_images(folder, where, what):
    """Return the sorted .png/.jpg/.jpeg paths in `folder`, skipping hidden files.

    Anything else in it is an error rather than left out, so nothing the user put there
    is silently ignored.

    Args:
        folder: The folder of images.
        where: The flag and folder the messages name first ("--data-dir DIR").
        what: How the messages name `folder` ("the class folder train/cat").

    Raises:
        DataError: `folder` holds no image, or an entry that is not a .png/.jpg/.jpeg file.
    """
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    others = [path for path in entries
              if not path.is_file() or path.suffix.lower() not in EXTENSIONS]
    if others:
        raise DataError(f"{where}: {others[0]} is not a .png/.jpg/.jpeg image; move it out of "
                        f"{what}.")
    if not entries:
        raise DataError(f"{where}: {what} holds no .png/.jpg/.jpeg images.")
    return entries
