"""Omniglot: decode the release once, cache it as one .npz, and build the few-shot splits.

The pipeline reproduces supervised-reptile (supervised_reptile/omniglot.py: read_dataset,
split_dataset, augment_dataset). The background and evaluation
sets are merged; characters are listed with alphabets in sorted order, then characters in
sorted order (1623 in all). Each 105x105 1-bit PNG is resized to 28x28 with NEAREST and
kept as it is, without inversion: background 1.0, ink 0.0 (stored as 255 and 0).

The cache is `<cache_dir>/omniglot_28x28_v2_<key>.npz`, one per source directory (see
`reptile_np.data.cache`): it is used only while the release files it was decoded from are
unchanged, and rebuilt otherwise.
"""
import contextlib
import io
import random
import re
import zipfile
from pathlib import Path

import numpy as np

from reptile_np.data import cache
from reptile_np.data.tasks import ClassImages, require_pillow
from reptile_np.files import atomic_path
from reptile_np.errors import DataError

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"

# Characters per alphabet in the public release (brendenlake/omniglot, python/). With it a
# broken download or unpack is reported by name: which alphabet or character is missing.
ALPHABETS = {
    BACKGROUND: {
        "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26,
        "Armenian": 41, "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46,
        "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26,
        "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26,
        "Grantha": 43, "Greek": 24, "Gujarati": 48, "Hebrew": 22,
        "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16, "Japanese_(hiragana)": 52,
        "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
        "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14,
        "Sanskrit": 42, "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
    },
    EVALUATION: {
        "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26,
        "Avesta": 26, "Ge_ez": 26, "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41,
        "Keble": 26, "Malayalam": 47, "Manipuri": 40, "Mongolian": 30,
        "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28,
        "Syriac_(Serto)": 23, "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
    },
}
DRAWINGS = 20
IMAGE_SIZE = 28
NUM_TRAIN_CHARACTERS = 1200
ROTATIONS = (0, 90, 180, 270)
CACHE_PREFIX = f"omniglot_{IMAGE_SIZE}x{IMAGE_SIZE}_v2"
VINYALS_SPLITS = ("train", "val", "test")
FETCH_HINT = "run `reptile-np fetch-data omniglot`"


def load_omniglot(data_dir, split="paper", seed=0, cache_dir=None, splits_dir=None, *,
                  flag="--data-dir"):
    """Load Omniglot as few-shot splits of 28x28 images.

    The "paper" split is supervised-reptile's: `random.seed(seed); random.shuffle(chars)`
    over the 1623 sorted characters; the first 1200 are meta-train, each as 4 classes
    rotated by 0/90/180/270 degrees counter-clockwise (4800 classes), and the other 423 are
    meta-test without rotation. The "vinyals" split reads `train.txt`, `val.txt` and
    `test.txt` (lines `Alphabet/characterNN/rotDDD`), one class per line.

    Args:
        data_dir: Directory holding `images_background.zip` and `images_evaluation.zip`
            (or the unpacked `images_background/` and `images_evaluation/` folders).
        split: "paper" or "vinyals".
        seed: Seed of the "paper" shuffle; supervised-reptile uses 0.
        cache_dir: Directory of the decoded caches; defaults to
            `reptile_np.data.cache.default_cache_dir("omniglot")`, where `fetch-data` puts
            them too.
        splits_dir: Directory of the Vinyals split files; defaults to
            `<data_dir>/splits/vinyals`.
        flag: The command-line flag `data_dir` came from, named in error messages.

    Returns:
        A dict of `ClassImages` with images of shape (classes, 20, 1, 28, 28): keys "train"
        and "test" for the paper split, "train", "val" and "test" for the Vinyals split.

    Raises:
        DataError: `data_dir` does not hold a complete, readable release, or a Vinyals
            split file is missing or malformed.
    """
    if split not in ("paper", "vinyals"):
        raise ValueError(f"split: expected 'paper' or 'vinyals', got {split!r}.")
    images, names = load_characters(data_dir, cache_dir, flag=flag)
    if split == "paper":
        order = list(range(len(names)))
        # random.Random(seed).shuffle draws exactly what random.seed(seed); random.shuffle
        # draws, and a shuffle depends only on the list length, so this is the reference split.
        random.Random(seed).shuffle(order)
        train = np.repeat(order[:NUM_TRAIN_CHARACTERS], len(ROTATIONS))
        turns = np.tile(np.arange(len(ROTATIONS)), NUM_TRAIN_CHARACTERS)
        test = np.array(order[NUM_TRAIN_CHARACTERS:])
        return {
            "train": _rotated_classes(images, names, train, turns),
            "test": _rotated_classes(images, names, test, np.zeros(len(test), dtype=int)),
        }
    where = f"splits_dir {splits_dir}" if splits_dir is not None \
        else f"{flag} {data_dir}/splits/vinyals"
    splits_dir = Path(splits_dir) if splits_dir is not None \
        else Path(data_dir) / "splits" / "vinyals"
    index = {name: i for i, name in enumerate(names)}
    result = {}
    for part in VINYALS_SPLITS:
        characters, turns = _read_split_file(splits_dir / f"{part}.txt", index, where)
        result[part] = _rotated_classes(images, names, characters, turns)
    return result


def load_characters(data_dir, cache_dir=None, *, flag="--data-dir"):
    """Load all characters from the cache of `data_dir`, decoding the release if needed.

    The release is checked first: its files must be present, and the cache is used only if
    it was decoded from exactly these files (same paths, sizes and mtimes). Otherwise the
    release is decoded and checked drawing by drawing, and the cache rebuilt; a failed
    rebuild leaves no cache behind.

    Args:
        data_dir: Directory of the release zips or their unpacked folders.
        cache_dir: Directory of the caches; defaults to `cache.default_cache_dir("omniglot")`.
        flag: The command-line flag `data_dir` came from, named in error messages.

    Returns:
        A tuple (images, names): uint8 images of shape (1623, 20, 28, 28) with values 0 (ink)
        and 255 (background), and the names "Alphabet/characterNN".

    Raises:
        DataError: The release is missing, incomplete or unreadable, or the cache cannot be
            written.
    """
    source = cache.source_dir(data_dir, flag, FETCH_HINT)
    stamp = source_fingerprint(source, flag)
    path = cache_file(cache_dir, source)
    cached = read_cache(path, stamp)
    if cached is not None:
        return cached
    cache.prepare_dir(path.parent, stale=[path])
    images, names = decode_omniglot(source, flag=flag)
    _write_cache(path, images, names, stamp)
    return images, names


def cache_characters(data_dir, images, names, cache_dir=None, *, flag="--data-dir"):
    """Store characters decoded from an identical copy as the cache of `data_dir`.

    `fetch-data --from` decodes (and so validates) the source before copying it; this
    keeps that decode as the cache of the copy, which is where `train` will look.

    Args:
        data_dir: The directory that now holds the release.
        images, names: As returned by `decode_omniglot` on an identical release.
        cache_dir: As for `load_characters`.
        flag: The command-line flag `data_dir` came from, named in error messages.
    """
    source = cache.source_dir(data_dir, flag, FETCH_HINT)
    path = cache_file(cache_dir, source)
    cache.prepare_dir(path.parent, stale=[path])
    _write_cache(path, images, names, source_fingerprint(source, flag))


def cache_file(cache_dir, source):
    """Return the path of the cache of the resolved release directory `source`.

    Args:
        cache_dir: Directory of the caches, or None for `cache.default_cache_dir("omniglot")`.
        source: The resolved release directory, as returned by `cache.source_dir`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir("omniglot")
    return cache_dir / f"{cache.cache_name(CACHE_PREFIX, source)}.npz"


def source_fingerprint(source, flag="--data-dir"):
    """Return the fingerprint of the release files in `source` (see `reptile_np.data.cache`).

    Only the files the decoder reads count: each zip, or each PNG of an unpacked folder.

    Raises:
        DataError: A source is neither a zip nor a folder in `source`.
    """
    files = []
    for location in _locate_sources(source, ALPHABETS, flag).values():
        files += [location] if location.is_file() else sorted(location.rglob("*.png"))
    return cache.fingerprint(source, files, image_size=IMAGE_SIZE, drawings=DRAWINGS)


def read_cache(path, stamp):
    """Read an Omniglot cache written for the release with fingerprint `stamp`; needs no Pillow.

    Args:
        path: The .npz cache file.
        stamp: The fingerprint of the release as it is now (`source_fingerprint`).

    Returns:
        A tuple (images, names) as returned by `load_characters`, or None when the cache is
        absent, unreadable, of another shape, or was decoded from other files: all cases in
        which it must be rebuilt.
    """
    expected = (sum(sum(counts.values()) for counts in ALPHABETS.values()), DRAWINGS,
                IMAGE_SIZE, IMAGE_SIZE)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["fingerprint"]) != stamp:
                return None
            images = archive["images"]
            names = tuple(archive["names"].tolist())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.shape != expected or len(names) != len(images):
        return None
    return images, names


def _write_cache(path, images, names, stamp):
    """Write the decoded characters to `path` atomically as an uncompressed .npz.

    Uncompressed, the 31 MB file loads in milliseconds. Names are stored as a fixed-width
    unicode array, so loading needs no pickle.
    """
    with cache.reporting_write_errors(path.parent), atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            np.savez(stream, images=images, names=np.array(names, dtype=str),
                     fingerprint=np.array(stamp))


def decode_omniglot(data_dir, alphabets=ALPHABETS, drawings=DRAWINGS, *, flag="--data-dir"):
    """Check the release in `data_dir` file by file and decode every drawing.

    Every expected alphabet and character must be present with exactly `drawings` PNGs,
    and every PNG must decode as a 1-bit (mode "1") image.

    Args:
        data_dir: Directory holding `<source>.zip` or an unpacked `<source>/` folder for
            each source in `alphabets`.
        alphabets: The expected layout: source name -> {alphabet: number of characters},
            characters being named character01, character02, ...; tests pass a small one.
        drawings: Expected drawings per character.
        flag: The command-line flag `data_dir` came from, named in error messages.

    Returns:
        A tuple (images, names) as returned by `load_characters`.

    Raises:
        DataError: A source is missing or unreadable, its layout differs from `alphabets`,
            or a PNG does not decode as a 1-bit image.
    """
    image_module = require_pillow()
    data_dir = cache.source_dir(data_dir, flag, FETCH_HINT)
    where = f"{flag} {data_dir}"
    characters = {}  # "Alphabet/characterNN" -> (reader, sorted PNG names)
    with contextlib.ExitStack() as stack:
        for source, location in _locate_sources(data_dir, alphabets, flag).items():
            reader = stack.enter_context(_SourceReader(location, source, where))
            found = reader.characters()
            _check_layout(where, source, location.name, found, alphabets[source], drawings)
            characters.update((name, (reader, files)) for name, files in found.items())
        # Alphabets first, then characters, both sorted, across the merged sources.
        names = tuple(sorted(characters, key=lambda name: tuple(name.split("/"))))
        images = np.empty((len(names), drawings, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for i, name in enumerate(names):
            reader, files = characters[name]
            for j, file in enumerate(files):
                images[i, j] = _decode_png(image_module, reader, f"{name}/{file}", where)
    return images, names


def _locate_sources(data_dir, alphabets, flag):
    """Return {source: its zip, or its folder if there is no zip} for each source."""
    located, missing = {}, []
    for source in alphabets:
        zip_path, folder = data_dir / f"{source}.zip", data_dir / source
        if zip_path.is_file():
            located[source] = zip_path
        elif folder.is_dir():
            located[source] = folder
        else:
            missing.append(source)
    if len(missing) == len(alphabets):
        raise DataError(
            f"{flag} {data_dir} holds no Omniglot images: expected "
            f"{' and '.join(f'{source}.zip' for source in alphabets)} or their folders; "
            f"{FETCH_HINT}.")
    if missing:
        raise DataError(
            f"{flag} {data_dir} has {', '.join(located[s].name for s in located)} but no "
            f"{' or '.join(f'{s}.zip or {s}/ folder' for s in missing)}; {FETCH_HINT}.")
    return located


class _SourceReader:
    """Lists and reads the PNGs of one source, from its zip or its folder."""

    def __init__(self, location, source, where):
        self.source, self.location, self.where = source, location, where
        if location.is_file():
            try:
                self._zip = zipfile.ZipFile(location)
            except (OSError, zipfile.BadZipFile) as exc:
                raise DataError(
                    f"{where}: {location.name} is not a readable zip archive ({exc}); "
                    f"{FETCH_HINT}.") from None
            prefix = f"{source}/"
            self._members = [name[len(prefix):] for name in self._zip.namelist()
                             if name.startswith(prefix) and not name.endswith("/")]
        else:
            self._zip = None
            self._members = [path.relative_to(location).as_posix()
                             for path in location.rglob("*") if path.is_file()]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._zip is not None:
            self._zip.close()

    def characters(self):
        """Return {"Alphabet/characterNN": sorted PNG names}, plus "" for misplaced PNGs."""
        found = {}
        for member in self._members:
            parts = member.split("/")
            if not member.endswith(".png"):
                continue  # stray files such as .DS_Store do not affect the data
            key = "/".join(parts[:2]) if len(parts) == 3 else ""
            found.setdefault(key, []).append(parts[-1] if key else member)
        return {key: sorted(files) for key, files in found.items()}

    def read(self, relative):
        """Return the bytes of one file, given its path relative to the source root."""
        if self._zip is not None:
            return self._zip.read(f"{self.source}/{relative}")
        return (self.location / relative).read_bytes()


def _check_layout(where, source, name, found, expected, drawings):
    """Raise a DataError listing how `found` differs from the expected alphabets."""
    if not found:
        raise DataError(
            f"{where} holds no Omniglot images in {name}: expected PNGs under "
            f"{source}/<Alphabet>/characterNN/; {FETCH_HINT}.")
    problems = []
    if "" in found:
        problems.append(f"PNGs outside Alphabet/characterNN/: {cache.listing(found[''], 40)}")
    alphabets = {}
    for character in filter(None, found):
        alphabet, number = character.split("/")
        alphabets.setdefault(alphabet, set()).add(number)
    missing = sorted(set(expected) - set(alphabets))
    if missing:
        problems.append(f"missing alphabets {cache.listing(missing, 40)}")
    for alphabet in sorted(set(alphabets) - set(expected)):
        problems.append(f"unexpected alphabet {alphabet}")
    for alphabet in sorted(set(expected) & set(alphabets)):
        wanted = {f"character{i:02d}" for i in range(1, expected[alphabet] + 1)}
        have = alphabets[alphabet]
        for character in sorted(wanted - have):
            problems.append(f"missing {alphabet}/{character}")
        for character in sorted(have - wanted):
            problems.append(f"unexpected {alphabet}/{character}")
    for character in sorted(filter(None, found)):
        if len(found[character]) != drawings:
            problems.append(f"{character} has {len(found[character])} drawings")
    if problems:
        raise DataError(
            f"{where}: {name} does not hold the expected {len(expected)} alphabets of "
            f"{sum(expected.values())} characters with {drawings} drawings each: "
            f"{cache.listing(problems, 70, sep='; ', more='more problems')}; {FETCH_HINT}.")


def _decode_png(image_module, reader, relative, where):
    what = f"{where}: {reader.location.name}, {reader.source}/{relative},"
    try:
        with image_module.open(io.BytesIO(reader.read(relative))) as image:
            if image.mode != "1":
                raise DataError(
                    f"{what} is not a 1-bit PNG (mode '1') but mode {image.mode!r}; "
                    f"{FETCH_HINT}.")
            # PIL resizes mode "1" with NEAREST whatever filter is asked for; naming it
            # keeps the 0/1 pixels of the reference pipeline explicit.
            small = image.resize((IMAGE_SIZE, IMAGE_SIZE), image_module.Resampling.NEAREST)
            pixels = np.asarray(small, dtype=bool)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{what} is not a readable PNG ({exc}); {FETCH_HINT}.") from None
    return pixels.astype(np.uint8) * np.uint8(255)  # white background -> 255 -> 1.0


def _rotated_classes(images, names, characters, turns):
    """Build ClassImages whose class i is character `characters[i]` turned `turns[i]` times.

    np.rot90 turns counter-clockwise, as PIL's `Image.rotate` does, and is exact for
    multiples of 90 degrees; like the reference it is applied after resizing.
    """
    out = np.empty((len(characters), images.shape[1], 1) + images.shape[2:], dtype=np.uint8)
    for k in range(len(ROTATIONS)):
        rows = np.flatnonzero(turns == k)
        out[rows, :, 0] = np.rot90(images[characters[rows]], k, axes=(2, 3))
    labels = tuple(f"{names[c]}/rot{90 * k:03d}" for c, k in zip(characters, turns))
    return ClassImages(out, labels)


def _read_split_file(path, index, where):
    if not path.is_file():
        raise DataError(
            f"{where} has no Vinyals split file {path.name}: copy train.txt, val.txt and "
            "test.txt there from jakesnell/prototypical-networks data/omniglot/splits/vinyals.")
    characters, turns = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"(.+/character\d+)/rot(\d{3})", line.strip())
        if not match or match.group(1) not in index or int(match.group(2)) not in ROTATIONS:
            raise DataError(
                f"{where}: line {number} of {path.name} should read "
                "Alphabet/characterNN/rotDDD with a known character and DDD in 000/090/180/270, "
                f"but is {cache.shorten(line.strip())!r}.")
        characters.append(index[match.group(1)])
        turns.append(int(match.group(2)) // 90)
    return np.array(characters, dtype=int), np.array(turns, dtype=int)
