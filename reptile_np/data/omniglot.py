"""Omniglot: decode the release once, cache it as one .npz, and build the few-shot splits.

The pipeline reproduces supervised-reptile (REFERENCE c). The background and evaluation
sets are merged; characters are listed with alphabets in sorted order, then characters in
sorted order (1623 in all). Each 105x105 1-bit PNG is resized to 28x28 with NEAREST and
kept as it is, without inversion: background 1.0, ink 0.0 (stored as 255 and 0).
"""
import contextlib
import io
import random
import re
import zipfile
from pathlib import Path

import numpy as np

from reptile_np.data.tasks import ClassImages, require_pillow
from reptile_np.files import atomic_path, ensure_writable_dir
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
CACHE_NAME = "omniglot_28x28_v1.npz"
VINYALS_SPLITS = ("train", "val", "test")
_MAX_PROBLEMS = 5


def load_omniglot(data_dir, split="paper", seed=0, cache_dir=None, splits_dir=None):
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
        cache_dir: Directory of the decoded cache; defaults to `data_dir`.
        splits_dir: Directory of the Vinyals split files; defaults to
            `<data_dir>/splits/vinyals`.

    Returns:
        A dict of `ClassImages` with images of shape (classes, 20, 1, 28, 28): keys "train"
        and "test" for the paper split, "train", "val" and "test" for the Vinyals split.
    """
    if split not in ("paper", "vinyals"):
        raise ValueError(f"split: expected 'paper' or 'vinyals', got {split!r}.")
    cache_dir = data_dir if cache_dir is None else cache_dir
    images, names = load_characters(data_dir, cache_dir)
    expected = sum(sum(counts.values()) for counts in ALPHABETS.values())
    if len(names) != expected:
        raise DataError(
            f"cache_dir: expected the Omniglot cache to hold {expected} characters, got "
            f"{len(names)}; delete {cache_file(cache_dir)} and load again.")
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
    splits_dir = Path(splits_dir) if splits_dir is not None \
        else Path(data_dir) / "splits" / "vinyals"
    index = {name: i for i, name in enumerate(names)}
    result = {}
    for part in VINYALS_SPLITS:
        characters, turns = _read_split_file(splits_dir / f"{part}.txt", index)
        result[part] = _rotated_classes(images, names, characters, turns)
    return result


def load_characters(data_dir, cache_dir=None):
    """Load all characters from the cache, decoding the release and writing it on first use.

    Args:
        data_dir: Directory of the release zips or their unpacked folders.
        cache_dir: Directory of the cache file; defaults to `data_dir`.

    Returns:
        A tuple (images, names): uint8 images of shape (1623, 20, 28, 28) with values 0 (ink)
        and 255 (background), and the names "Alphabet/characterNN".
    """
    path = cache_file(cache_dir if cache_dir is not None else data_dir)
    if path.exists():
        return read_cache(path)
    images, names = decode_omniglot(data_dir)
    ensure_writable_dir(path.parent, "cache_dir")
    write_cache(path, images, names)
    return images, names


def cache_file(cache_dir):
    """Return the path of the Omniglot cache inside `cache_dir`."""
    return Path(cache_dir) / CACHE_NAME


def read_cache(path):
    """Read an Omniglot cache written by `write_cache`; needs no Pillow.

    Args:
        path: The .npz cache file.

    Returns:
        A tuple (images, names) as returned by `load_characters`.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            names = tuple(archive["names"].tolist())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cache_dir: expected {path} to be an Omniglot cache, but it is unreadable "
            f"({exc}); delete it and rerun `reptile-np fetch-data omniglot`.") from None
    if images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE) or len(names) != len(images):
        raise DataError(
            f"cache_dir: expected {path} to hold uint8 images of shape (characters, drawings, "
            f"{IMAGE_SIZE}, {IMAGE_SIZE}) with one name each, got {images.dtype} "
            f"{images.shape} and {len(names)} names; delete it and rerun "
            "`reptile-np fetch-data omniglot`.")
    return images, names


def write_cache(path, images, names):
    """Write the decoded characters to `path` atomically as an uncompressed .npz.

    Uncompressed, the 31 MB file loads in milliseconds. Names are stored as a fixed-width
    unicode array, so loading needs no pickle.

    Args:
        path: Destination .npz file.
        images: uint8 array (characters, drawings, 28, 28).
        names: One "Alphabet/characterNN" per character.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            np.savez(stream, images=images, names=np.array(names, dtype=str))


def decode_omniglot(data_dir, alphabets=ALPHABETS, drawings=DRAWINGS):
    """Check the release in `data_dir` file by file and decode every drawing.

    Every expected alphabet and character must be present with exactly `drawings` PNGs,
    and every PNG must decode as a 1-bit (mode "1") image.

    Args:
        data_dir: Directory holding `<source>.zip` or an unpacked `<source>/` folder for
            each source in `alphabets`.
        alphabets: The expected layout: source name -> {alphabet: number of characters},
            characters being named character01, character02, ...; tests pass a small one.
        drawings: Expected drawings per character.

    Returns:
        A tuple (images, names) as returned by `load_characters`.
    """
    image_module = require_pillow()
    data_dir = Path(data_dir)
    characters = {}  # "Alphabet/characterNN" -> (reader, sorted PNG names)
    with contextlib.ExitStack() as stack:
        for source, expected in alphabets.items():
            reader = stack.enter_context(_SourceReader(data_dir, source))
            found = reader.characters()
            _check_layout(reader.location, found, expected, drawings)
            characters.update((name, (reader, files)) for name, files in found.items())
        # Alphabets first, then characters, both sorted, across the merged sources.
        names = tuple(sorted(characters, key=lambda name: tuple(name.split("/"))))
        images = np.empty((len(names), drawings, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for i, name in enumerate(names):
            reader, files = characters[name]
            for j, file in enumerate(files):
                images[i, j] = _decode_png(image_module, reader, f"{name}/{file}")
    return images, names


class _SourceReader:
    """Lists and reads the PNGs of one source, from its zip if present, else its folder."""

    def __init__(self, data_dir, source):
        self.source = source
        zip_path = data_dir / f"{source}.zip"
        folder = data_dir / source
        if zip_path.is_file():
            self.location = zip_path
            try:
                self._zip = zipfile.ZipFile(zip_path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise DataError(
                    f"data_dir: expected {zip_path} to be a zip archive, but it is unreadable "
                    f"({exc}); delete it and rerun `reptile-np fetch-data omniglot`.") from None
            prefix = f"{source}/"
            self._members = [name[len(prefix):] for name in self._zip.namelist()
                             if name.startswith(prefix) and not name.endswith("/")]
        elif folder.is_dir():
            self.location = folder
            self._zip = None
            self._members = [path.relative_to(folder).as_posix()
                             for path in folder.rglob("*") if path.is_file()]
        else:
            raise DataError(
                f"data_dir: expected {zip_path.name} or a {source}/ folder in {data_dir}, "
                "got neither; run `reptile-np fetch-data omniglot`.")

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


def _check_layout(location, found, expected, drawings):
    problems = []
    if "" in found:
        problems.append(f"PNGs outside Alphabet/characterNN/: {', '.join(found[''][:3])}")
    alphabets = {}
    for name in filter(None, found):
        alphabet, character = name.split("/")
        alphabets.setdefault(alphabet, set()).add(character)
    missing = sorted(set(expected) - set(alphabets))
    if missing:
        problems.append(f"missing alphabets {', '.join(missing)}")
    for alphabet in sorted(set(alphabets) - set(expected)):
        problems.append(f"unexpected alphabet {alphabet}")
    for alphabet in sorted(set(expected) & set(alphabets)):
        wanted = {f"character{i:02d}" for i in range(1, expected[alphabet] + 1)}
        have = alphabets[alphabet]
        for character in sorted(wanted - have):
            problems.append(f"missing {alphabet}/{character}")
        for character in sorted(have - wanted):
            problems.append(f"unexpected {alphabet}/{character}")
    for name in sorted(filter(None, found)):
        if len(found[name]) != drawings:
            problems.append(f"{name} has {len(found[name])} drawings")
    if problems:
        shown = "; ".join(problems[:_MAX_PROBLEMS])
        more = f"; and {len(problems) - _MAX_PROBLEMS} more" \
            if len(problems) > _MAX_PROBLEMS else ""
        raise DataError(
            f"data_dir: expected {location} to hold {len(expected)} alphabets with "
            f"{sum(expected.values())} characters of {drawings} drawings each, got {shown}{more}; "
            "re-download it with `reptile-np fetch-data omniglot`.")


def _decode_png(image_module, reader, relative):
    where = f"{reader.location}/{relative}"
    try:
        with image_module.open(io.BytesIO(reader.read(relative))) as image:
            if image.mode != "1":
                raise DataError(
                    f"data_dir: expected {where} to be a 1-bit PNG (mode '1'), got mode "
                    f"{image.mode!r}.")
            # PIL resizes mode "1" with NEAREST whatever filter is asked for; naming it
            # keeps the 0/1 pixels of the reference pipeline explicit.
            small = image.resize((IMAGE_SIZE, IMAGE_SIZE), image_module.Resampling.NEAREST)
            pixels = np.asarray(small, dtype=bool)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"data_dir: expected {where} to be a readable PNG, got an error ({exc}); "
            "re-download it with `reptile-np fetch-data omniglot`.") from None
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


def _read_split_file(path, index):
    if not path.is_file():
        raise DataError(
            f"splits_dir: expected the Vinyals split file {path.name} in {path.parent} (copy "
            "train.txt, val.txt and test.txt from jakesnell/prototypical-networks "
            "data/omniglot/splits/vinyals), got no such file.")
    characters, turns = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"(.+/character\d+)/rot(\d{3})", line.strip())
        if not match or match.group(1) not in index or int(match.group(2)) not in ROTATIONS:
            raise DataError(
                f"splits_dir: expected line {number} of {path} to read "
                f"Alphabet/characterNN/rotDDD with a known character and DDD in 000/090/180/270, "
                f"got {line.strip()!r}.")
        characters.append(index[match.group(1)])
        turns.append(int(match.group(2)) // 90)
    return np.array(characters, dtype=int), np.array(turns, dtype=int)
