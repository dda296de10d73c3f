"""Tests of reptile_np.data: task sampling, Omniglot, Mini-ImageNet and synthetic glyphs."""
import io
import itertools
import random
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from reptile_np import cli
from reptile_np.data import omniglot
from reptile_np.data.miniimagenet import load_miniimagenet
from reptile_np.data.omniglot import decode_omniglot, load_characters, load_omniglot
from reptile_np.data.synthetic import load_synthetic, make_synthetic
from reptile_np.data.tasks import PILLOW_MISSING, ClassImages, sample_task, split_eval_task
from reptile_np.errors import DataError

from conftest import OMNIGLOT_DIR, SHARED_DATA, record_omniglot_decodes


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """Point $REPTILE_NP_DATA, hence the default cache directories, at a fresh directory."""
    monkeypatch.setenv("REPTILE_NP_DATA", str(tmp_path / "reptile-np-data"))
    return tmp_path / "reptile-np-data"


def _block_pillow(monkeypatch):
    """Make `from PIL import Image` fail, as on an install without the data extra."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)


def _chi_square(counts):
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _id_split(num_classes=10, samples=6):
    """A split whose image (c, s) is filled with the value c * samples + s."""
    ids = np.arange(num_classes * samples, dtype=np.uint8).reshape(num_classes, samples)
    images = np.broadcast_to(ids[:, :, None, None, None], (num_classes, samples, 1, 4, 4))
    return ClassImages(np.ascontiguousarray(images), [f"c{i}" for i in range(num_classes)])


# ---------------------------------------------------------------------------- task sampling

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_task_shapes_labels_and_distinct_samples(dtype):
    split = _id_split()
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = sample_task(split, 4, 3, rng, dtype=dtype)
        assert x.shape == (12, 1, 4, 4) and x.dtype == dtype and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(y, np.repeat(np.arange(4), 3))
        ids = np.rint(x[:, 0, 0, 0] * 255).astype(int).reshape(4, 3)
        classes, samples = ids // 6, ids % 6
        assert all(len(set(row)) == 1 for row in classes)  # one class per label
        assert len(set(classes[:, 0])) == 4  # different classes for different labels
        assert all(len(set(row)) == 3 for row in samples)  # K distinct samples


def test_sample_task_scales_255_to_exactly_one():
    split = ClassImages(np.full((2, 2, 1, 2, 2), 255, dtype=np.uint8), ["a", "b"])
    x, _ = sample_task(split, 2, 2, np.random.default_rng(0))
    assert np.all(x == 1.0)


def test_label_permutation_is_uniform():
    split = _id_split(num_classes=3, samples=2)
    rng = np.random.default_rng(1)
    permutations = list(itertools.permutations(range(3)))
    counts = np.zeros(len(permutations))
    for _ in range(3000):
        x, _ = sample_task(split, 3, 1, rng)
        classes = tuple(np.rint(x[:, 0, 0, 0] * 255).astype(int) // 2)
        counts[permutations.index(classes)] += 1
    # 5 degrees of freedom: 30 is far in the tail (p < 1e-5), a fixed order gives 15000.
    assert _chi_square(counts) < 30, counts


def test_class_and_sample_selection_is_uniform():
    split = _id_split(num_classes=10, samples=6)
    rng = np.random.default_rng(2)
    class_counts, sample_counts = np.zeros(10), np.zeros(6)
    for _ in range(2000):
        x, _ = sample_task(split, 3, 2, rng)
        ids = np.rint(x[:, 0, 0, 0] * 255).astype(int)
        np.add.at(class_counts, ids[::2] // 6, 1)
        np.add.at(sample_counts, ids % 6, 1)
    assert _chi_square(class_counts) < 40, class_counts  # 9 dof
    assert _chi_square(sample_counts) < 30, sample_counts  # 5 dof


def test_same_seed_gives_the_same_task():
    split = _id_split()
    first = sample_task(split, 5, 2, np.random.default_rng(7))
    second = sample_task(split, 5, 2, np.random.default_rng(7))
    other = sample_task(split, 5, 2, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("num_classes, num_shots, argument", [
    (11, 2, "num_classes"), (0, 2, "num_classes"), (3, 7, "num_shots"), (3, 2.0, "num_shots"),
])
def test_sample_task_rejects_impossible_requests(num_classes, num_shots, argument):
    given = num_shots if argument == "num_shots" else num_classes
    with pytest.raises(ValueError, match=f"^{argument}: expected an integer from 1 to .*, "
                                         f"got {given}\\.$"):
        sample_task(_id_split(), num_classes, num_shots, np.random.default_rng(0))


def test_split_eval_task_takes_the_first_example_of_each_label():
    x = np.arange(9) * 10
    y = np.array([1, 0, 1, 2, 0, 2, 1, 2, 0])
    train_x, train_y, query_x, query_y = split_eval_task(x, y, 3)
    np.testing.assert_array_equal(query_x, [10, 0, 30])
    np.testing.assert_array_equal(query_y, [0, 1, 2])
    np.testing.assert_array_equal(train_x, [20, 40, 50, 60, 70, 80])
    np.testing.assert_array_equal(train_y, [1, 0, 2, 1, 2, 0])


def test_split_eval_task_on_a_sampled_task():
    x, y = sample_task(_id_split(), 4, 3, np.random.default_rng(0))
    train_x, train_y, query_x, query_y = split_eval_task(x, y, 4)
    np.testing.assert_array_equal(query_x, x[::3])
    np.testing.assert_array_equal(train_y, np.repeat(np.arange(4), 2))
    assert len(train_x) == 8


def test_split_eval_task_needs_two_examples_per_label():
    with pytest.raises(ValueError, match="^y: expected every label 0..2 at least twice"):
        split_eval_task(np.zeros(6), np.array([0, 0, 1, 1, 2, 1]), 3)
    with pytest.raises(ValueError, match="^num_classes: expected an integer from 1 to 3"):
        split_eval_task(np.zeros(6), np.array([0, 0, 1, 1, 2, 2]), 4)


# ---------------------------------------------------------------------------- Omniglot

@pytest.fixture(scope="module")
def paper_split(omniglot_cache):
    return load_omniglot(OMNIGLOT_DIR, cache_dir=omniglot_cache)


def _characters_from_zips():
    """The sorted character list, computed from the zip listings alone."""
    characters = set()
    for source in (omniglot.BACKGROUND, omniglot.EVALUATION):
        with zipfile.ZipFile(OMNIGLOT_DIR / f"{source}.zip") as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if member.endswith(".png"):
                    characters.add((parts[1], parts[2]))
    return ["/".join(pair) for pair in sorted(characters)]


def test_paper_split_matches_random_seed_0_shuffle(paper_split):
    characters = _characters_from_zips()
    assert len(characters) == 1623
    state = random.getstate()
    try:
        random.seed(0)
        random.shuffle(characters)
    finally:
        random.setstate(state)
    train, test = paper_split["train"], paper_split["test"]
    assert (train.num_classes, test.num_classes) == (4800, 423)
    assert train.names == tuple(f"{c}/rot{r:03d}" for c in characters[:1200]
                                for r in (0, 90, 180, 270))
    assert test.names == tuple(f"{c}/rot000" for c in characters[1200:])
    train_chars = {name.rsplit("/", 1)[0] for name in train.names}
    test_chars = {name.rsplit("/", 1)[0] for name in test.names}
    assert len(train_chars) == 1200 and len(test_chars) == 423 and not train_chars & test_chars
    assert train.images.shape == (4800, 20, 1, 28, 28)
    assert test.images.shape == (423, 20, 1, 28, 28)


def test_paper_split_depends_on_seed(omniglot_cache, paper_split):
    other = load_omniglot(OMNIGLOT_DIR, seed=1, cache_dir=omniglot_cache)
    assert other["test"].names != paper_split["test"].names
    again = load_omniglot(OMNIGLOT_DIR, seed=0, cache_dir=omniglot_cache)
    np.testing.assert_array_equal(again["test"].images, paper_split["test"].images)


def test_omniglot_pixels_are_binary_with_white_background(paper_split):
    images = paper_split["test"].images
    assert set(np.unique(images)) == {0, 255}
    assert (images == 255).mean() > 0.8  # background, not inverted
    x, _ = sample_task(paper_split["test"], 5, 1, np.random.default_rng(0))
    assert set(np.unique(x)) == {0.0, 1.0}


def test_omniglot_decoding_matches_pillow(paper_split):
    from PIL import Image
    split = paper_split["test"]
    alphabet, character, _ = split.names[0].split("/")
    source = omniglot.BACKGROUND if alphabet in omniglot.ALPHABETS[omniglot.BACKGROUND] \
        else omniglot.EVALUATION
    with zipfile.ZipFile(OMNIGLOT_DIR / f"{source}.zip") as archive:
        members = sorted(m for m in archive.namelist()
                         if m.startswith(f"{source}/{alphabet}/{character}/")
                         and m.endswith(".png"))
        with Image.open(io.BytesIO(archive.read(members[3]))) as image:
            assert image.mode == "1" and image.size == (105, 105)
            expected = np.asarray(image.resize((28, 28)), dtype=np.uint8) * 255
    np.testing.assert_array_equal(split.images[0, 3, 0], expected)


def test_rotated_classes_are_counter_clockwise_quarter_turns(paper_split):
    from PIL import Image
    train = paper_split["train"]
    for base in (0, 4 * 517):
        upright = train.images[base]
        for k in range(1, 4):
            np.testing.assert_array_equal(train.images[base + k],
                                          np.rot90(upright, k, axes=(-2, -1)))
    # np.rot90 must turn the same way as PIL's rotate (counter-clockwise), as the reference does.
    drawing = Image.fromarray(train.images[0, 0, 0])
    np.testing.assert_array_equal(np.asarray(drawing.rotate(90)), train.images[1, 0, 0])


def test_vinyals_split(omniglot_cache, paper_split):
    splits_dir = OMNIGLOT_DIR / "splits" / "vinyals"
    if not splits_dir.is_dir():
        pytest.skip(f"no Vinyals split files in {splits_dir}")
    splits = load_omniglot(OMNIGLOT_DIR, split="vinyals", cache_dir=omniglot_cache)
    assert {k: v.num_classes for k, v in splits.items()} == \
        {"train": 4112, "val": 688, "test": 1692}
    for part, split in splits.items():
        lines = (splits_dir / f"{part}.txt").read_text().split()
        assert split.names == tuple(lines)
    train = splits["train"]
    assert train.names[1].endswith("/rot090")
    np.testing.assert_array_equal(train.images[1], np.rot90(train.images[0], 1, axes=(-2, -1)))
    # The same character, unrotated, holds the same pixels as in the paper split.
    paper_test = paper_split["test"]
    name = paper_test.names[0]
    vinyals_names = [n for s in splits.values() for n in s.names]
    part = next(s for s in splits.values() if name in s.names)
    np.testing.assert_array_equal(part.images[part.names.index(name)], paper_test.images[0])
    assert len(set(n.rsplit("/", 1)[0] for n in vinyals_names)) == 1623


def test_vinyals_split_files_missing(omniglot_cache, tmp_path):
    with pytest.raises(DataError, match="^splits_dir .* has no Vinyals split file train.txt: "):
        load_omniglot(OMNIGLOT_DIR, split="vinyals", cache_dir=omniglot_cache,
                      splits_dir=tmp_path)


def test_cached_load_is_fast_and_needs_no_pillow(omniglot_cache, paper_split, monkeypatch):
    _block_pillow(monkeypatch)
    start = time.perf_counter()
    again = load_omniglot(OMNIGLOT_DIR, cache_dir=omniglot_cache)
    elapsed = time.perf_counter() - start
    print(f"cached Omniglot load (paper split): {elapsed:.3f} s")
    assert elapsed < 1.5
    for part in ("train", "test"):
        assert again[part].names == paper_split[part].names
        np.testing.assert_array_equal(again[part].images, paper_split[part].images)


def test_decoding_without_pillow_names_the_extra(tmp_path, monkeypatch):
    _block_pillow(monkeypatch)
    with pytest.raises(ImportError) as error:
        load_characters(OMNIGLOT_DIR, cache_dir=tmp_path)
    assert str(error.value) == PILLOW_MISSING
    assert not list(tmp_path.iterdir())


def _counting_decoder(monkeypatch, omniglot_cache):
    """Replace the Omniglot decoder by one that returns the shared decode and counts calls.

    Decoding the full release takes seconds; what these tests check is whether and where
    the loaders decode, not the decoding itself.
    """
    decoded = omniglot.read_cache(_shared_cache(omniglot_cache), _shared_stamp())
    return record_omniglot_decodes(monkeypatch, decoded)


def _shared_stamp():
    return omniglot.source_fingerprint(OMNIGLOT_DIR.resolve())


def _shared_cache(cache_dir):
    return omniglot.cache_file(cache_dir, OMNIGLOT_DIR.resolve())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cache_is_rebuilt(omniglot_cache, tmp_path, monkeypatch, damage):
    good = _shared_cache(omniglot_cache).read_bytes()
    broken = good[: len(good) // 2] if damage == "truncate" else b"not a cache" * 100
    path = _shared_cache(tmp_path)
    path.write_bytes(broken)
    calls = _counting_decoder(monkeypatch, omniglot_cache)
    images, names = load_characters(OMNIGLOT_DIR, cache_dir=tmp_path)
    assert calls == [OMNIGLOT_DIR.resolve()]
    assert images.shape == (1623, 20, 28, 28) and len(names) == 1623
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _zip_of(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


DAMAGES = {
    "empty directory": (
        None, " holds no Omniglot images: expected images_background.zip and "
              "images_evaluation.zip or their folders; run `reptile-np fetch-data omniglot`\\."),
    "random bytes": (
        lambda path: path.write_bytes(np.random.default_rng(0).bytes(5000)),
        ": images_background.zip is not a readable zip archive \\(File is not a zip file\\); "),
    "only hello.txt": (
        lambda path: _zip_of(path, {"hello.txt": b"hello"}),
        " holds no Omniglot images in images_background.zip: expected PNGs under "
        "images_background/<Alphabet>/characterNN/; "),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_changed_data_dir_is_checked_before_its_cache(omniglot_cache, tmp_path, monkeypatch,
                                                      damage):
    data_dir, cache_dir = tmp_path / "omniglot", tmp_path / "cache"
    data_dir.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (data_dir / name).write_bytes((OMNIGLOT_DIR / name).read_bytes())
    # The cache of another source in the same directory must survive whatever happens.
    cache_dir.mkdir()
    other = _shared_cache(cache_dir)
    other.write_bytes(_shared_cache(omniglot_cache).read_bytes())
    real_decoder = omniglot.decode_omniglot
    calls = _counting_decoder(monkeypatch, omniglot_cache)
    load_characters(data_dir, cache_dir=cache_dir)
    load_characters(data_dir, cache_dir=cache_dir)
    assert calls == [data_dir]  # decoded once, for this source, then read from its cache
    assert len(list(cache_dir.iterdir())) == 2
    monkeypatch.setattr(omniglot, "decode_omniglot", real_decoder)
    write, message = DAMAGES[damage]
    for name in ("images_background.zip", "images_evaluation.zip"):
        (data_dir / name).unlink()
        if write is not None:
            write(data_dir / name)
    with pytest.raises(ValueError, match=f"^--data-dir {data_dir}{message}"):
        load_omniglot(data_dir, cache_dir=cache_dir)
    # Nothing temporary is left and the other source's cache is intact. A rebuild that
    # failed removed the stale cache; with no release left it stays, unusable unless the
    # very same files (same sizes and mtimes) come back.
    left = sorted(cache_dir.iterdir())
    assert left == ([other] if write else sorted([other, omniglot.cache_file(cache_dir, data_dir)]))
    assert other.read_bytes() == _shared_cache(omniglot_cache).read_bytes()


def test_a_file_as_data_dir_is_not_a_directory(tmp_path, capsys):
    path = tmp_path / "images_background.zip"
    path.write_bytes(b"PK")
    for load in (load_omniglot, load_miniimagenet):
        with pytest.raises(ValueError, match=f"^--data-dir {path} is not a directory: pass the "
                                             "folder that holds the data\\.$"):
            load(path)
    assert cli.main(["train", "--dataset", "omniglot", "--data-dir", str(path),
                     "--checkpoint", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"reptile-np train: error: --data-dir {path} is not a directory: pass the "
                     "folder that holds the data."]


def test_layout_errors_stay_short_and_name_the_flag(tmp_path):
    pytest.importorskip("PIL")
    # One stray alphabet per source instead of the real ones, 3 characters of 1 drawing each:
    # 30 missing alphabets, 1 unexpected alphabet and 3 short characters to report.
    _tiny_release(tmp_path, {"images_background": {"Alpha": 3}, "images_evaluation": {"Beta": 3}},
                  1)
    with pytest.raises(DataError) as error:
        load_omniglot(tmp_path)
    message = str(error.value)
    assert message.startswith(f"--data-dir {tmp_path.resolve()}: images_background.zip does "
                              "not hold the expected 30 alphabets of 964 characters with 20 "
                              "drawings each: missing alphabets Alphabet_of_the_Magi, and 29 "
                              "more; ")
    assert message.endswith("; and 4 more problems; run "
                            "`reptile-np fetch-data omniglot`.")
    assert len(message) - len(str(tmp_path.resolve())) < 240
    assert "data_dir:" not in message and "cache_dir" not in message and ".tmp" not in message
    # Mini-ImageNet: 30 classes of the wrong size, named only as far as the line allows.
    _mini_tree(tmp_path / "mini")
    for i in range(30):
        (tmp_path / "mini" / "train" / f"n{i:08d}").mkdir()
    with pytest.raises(DataError) as error:
        load_miniimagenet(tmp_path / "mini")
    message = str(error.value)
    assert message.startswith(f"--data-dir {tmp_path / 'mini'}: every class of the train split "
                              "needs the same number of images (0 in most), but n00000000 has 0, "
                              "n00000001 has 0, ")
    assert message.endswith(", and 27 more.")
    assert len(message) - len(str(tmp_path)) < 240


def _png(draw_ink, mode="1"):
    from PIL import Image
    image = Image.new(mode, (105, 105), 255)
    for row, col in draw_ink:
        image.putpixel((col, row), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_release(root, layout, drawings, as_zip=True, skip=(), mode="1"):
    """Write a small Omniglot-like release; `skip` lists member paths to leave out."""
    root.mkdir(parents=True, exist_ok=True)
    for source, alphabets in layout.items():
        members = {}
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                for d in range(1, drawings + 1):
                    member = f"{source}/{alphabet}/character{c:02d}/0001_{d:02d}.png"
                    if member not in skip:
                        members[member] = _png([(10 * c, 10 * d)], mode)
        if as_zip:
            with zipfile.ZipFile(root / f"{source}.zip", "w") as archive:
                for member, data in members.items():
                    archive.writestr(member, data)
        else:
            for member, data in members.items():
                (root / member).parent.mkdir(parents=True, exist_ok=True)
                (root / member).write_bytes(data)


TINY = {"images_background": {"Beta": 2, "Alpha": 1}, "images_evaluation": {"Gamma": 2}}


def test_tiny_release_decodes_from_zips_and_folders(tmp_path):
    pytest.importorskip("PIL")
    _tiny_release(tmp_path / "zips", TINY, 3)
    _tiny_release(tmp_path / "folders", TINY, 3, as_zip=False)
    images, names = decode_omniglot(tmp_path / "zips", alphabets=TINY, drawings=3)
    assert names == ("Alpha/character01", "Beta/character01", "Beta/character02",
                     "Gamma/character01", "Gamma/character02")
    assert images.shape == (5, 3, 28, 28) and images.dtype == np.uint8
    # Each drawing has one ink pixel at (10c, 10d) of 105: after NEAREST resizing to 28 it
    # survives or vanishes, but the background stays 255.
    assert (images == 255).mean() > 0.99
    folder_images, folder_names = decode_omniglot(tmp_path / "folders", alphabets=TINY,
                                                  drawings=3)
    assert folder_names == names
    np.testing.assert_array_equal(folder_images, images)


def test_incomplete_release_names_what_is_missing(tmp_path):
    pytest.importorskip("PIL")
    skip = {"images_background/Beta/character02/0001_02.png"}
    skip |= {f"images_evaluation/Gamma/character02/0001_{d:02d}.png" for d in (1, 2, 3)}
    _tiny_release(tmp_path, TINY, 3, skip=skip)
    with pytest.raises(DataError) as error:
        decode_omniglot(tmp_path, alphabets=TINY, drawings=3)
    assert "Beta/character02 has 2 drawings" in str(error.value)
    _tiny_release(tmp_path, {"images_background": {"Beta": 2}}, 3)
    with pytest.raises(DataError, match="missing alphabets Alpha"):
        decode_omniglot(tmp_path, alphabets=TINY, drawings=3)


def test_release_with_wrong_mode_is_rejected(tmp_path):
    pytest.importorskip("PIL")
    _tiny_release(tmp_path, TINY, 2, mode="L")
    with pytest.raises(DataError, match="is not a 1-bit PNG \\(mode '1'\\) but mode 'L'"):
        decode_omniglot(tmp_path, alphabets=TINY, drawings=2)


def test_missing_release_points_to_fetch_data(tmp_path):
    _tiny_release(tmp_path, {"images_background": {"Alpha": 1}}, 1)
    with pytest.raises(DataError, match="^--data-dir .* has images_background.zip but no "
                                        "images_evaluation.zip or images_evaluation/ folder; "
                                        "run `reptile-np fetch-data omniglot`\\.$"):
        load_omniglot(tmp_path)


# ---------------------------------------------------------------------------- Mini-ImageNet

MINI_CLASSES = {"train": ["n03", "n01", "n02"], "val": ["n04", "n05"], "test": ["n06", "n07"]}


def _mini_tree(root, per_class=4, short_class=None, csv_dir=None):
    """Write small JPEGs/PNGs in the folder layout, or the CSV layout if csv_dir is given."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, classes in MINI_CLASSES.items():
        rows = ["filename,label"]
        for label in classes:
            count = per_class - 1 if label == short_class else per_class
            for i in range(count):
                pixels = rng.integers(0, 256, size=(90 + i, 100, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                suffix = ".jpg"
                if i == 1:
                    image, suffix = image.convert("L"), ".png"  # greyscale must become RGB
                name = f"{label}{i:08d}{suffix}"
                if csv_dir is None:
                    path = root / split / label / name
                else:
                    path = root / "images" / name
                    rows.append(f"{name},{label}")
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
        if csv_dir is not None:
            csv_dir.mkdir(parents=True, exist_ok=True)
            (csv_dir / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _expected_mini(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.resize((84, 84), Image.Resampling.NEAREST).convert("RGB"))


def test_miniimagenet_folder_layout(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    data_dir, cache_dir = tmp_path / "mini", tmp_path / "cache"
    _mini_tree(data_dir)
    splits = load_miniimagenet(data_dir, cache_dir=cache_dir)
    assert {k: v.images.shape for k, v in splits.items()} == {
        "train": (3, 4, 3, 84, 84), "val": (2, 4, 3, 84, 84), "test": (2, 4, 3, 84, 84)}
    assert splits["train"].names == ("n01", "n02", "n03")
    assert isinstance(splits["train"].images, np.memmap)
    for i in (0, 1):
        path = sorted((data_dir / "train" / "n02").iterdir())[i]
        np.testing.assert_array_equal(splits["train"].images[1, i].transpose(1, 2, 0),
                                      _expected_mini(path))
    x, y = sample_task(splits["train"], 3, 2, np.random.default_rng(0))
    assert x.shape == (6, 3, 84, 84) and x.dtype == np.float32
    # The second load reads only the cache.
    _block_pillow(monkeypatch)
    again = load_miniimagenet(data_dir, cache_dir=cache_dir)
    np.testing.assert_array_equal(again["test"].images, splits["test"].images)


def test_miniimagenet_csv_layout_matches_folder_layout(tmp_path):
    pytest.importorskip("PIL")
    _mini_tree(tmp_path / "folders")
    _mini_tree(tmp_path / "flat", csv_dir=tmp_path / "csv")
    folders = load_miniimagenet(tmp_path / "folders", cache_dir=tmp_path / "c1")
    flat = load_miniimagenet(tmp_path / "flat", cache_dir=tmp_path / "c2",
                             csv_dir=tmp_path / "csv", mmap=False)
    for split in ("train", "val", "test"):
        assert flat[split].names == folders[split].names
        np.testing.assert_array_equal(flat[split].images, folders[split].images)
    assert not isinstance(flat["train"].images, np.memmap)


def test_miniimagenet_requires_equal_class_sizes(tmp_path):
    pytest.importorskip("PIL")
    _mini_tree(tmp_path, short_class="n02")
    with pytest.raises(DataError, match="same number of images \\(4 in most\\), but n02 has 3\\.$"):
        load_miniimagenet(tmp_path, cache_dir=tmp_path / "cache")


def test_miniimagenet_missing_layout(tmp_path):
    with pytest.raises(DataError, match="^--data-dir .* holds no Mini-ImageNet images: expected "
                                        "train/, val/ and test/ folders of <wnid>/\\*.jpg"):
        load_miniimagenet(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="^--data-dir .* has no val/ folder"):
        load_miniimagenet(tmp_path)


def test_miniimagenet_corrupt_cache_is_rebuilt(tmp_path):
    pytest.importorskip("PIL")
    _mini_tree(tmp_path / "mini")
    first = load_miniimagenet(tmp_path / "mini", cache_dir=tmp_path / "cache", mmap=False)
    npy = next((tmp_path / "cache").glob("*_val.npy"))
    npy.write_bytes(npy.read_bytes()[:200])
    again = load_miniimagenet(tmp_path / "mini", cache_dir=tmp_path / "cache", mmap=False)
    np.testing.assert_array_equal(again["val"].images, first["val"].images)
    assert len(npy.read_bytes()) > 200


def test_miniimagenet_unreadable_image(tmp_path):
    pytest.importorskip("PIL")
    _mini_tree(tmp_path)
    broken = sorted((tmp_path / "train" / "n01").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DataError, match=f"^--data-dir {tmp_path}: {broken} is not a readable "
                                        "image .*; replace the file\\.$"):
        load_miniimagenet(tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_failed_miniimagenet_build_leaves_no_cache(tmp_path):
    pytest.importorskip("PIL")
    data_dir, cache_dir = tmp_path / "mini", tmp_path / "cache"
    _mini_tree(data_dir)
    # The last image decoded: train and val are complete by then.
    broken = sorted((data_dir / "test" / "n07").iterdir())[-1]
    good = broken.read_bytes()
    broken.write_bytes(good[:100])
    with pytest.raises(DataError, match=f"{broken} is not a readable image"):
        load_miniimagenet(data_dir, cache_dir=cache_dir)
    assert not list(cache_dir.iterdir())
    broken.write_bytes(good)
    splits = load_miniimagenet(data_dir, cache_dir=cache_dir)
    assert {k: v.images.shape[:2] for k, v in splits.items()} == {
        "train": (3, 4), "val": (2, 4), "test": (2, 4)}
    np.testing.assert_array_equal(splits["test"].images[1, 3].transpose(1, 2, 0),
                                  _expected_mini(broken))


def test_miniimagenet_cache_follows_the_images(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    data_dir, cache_dir = tmp_path / "mini", tmp_path / "cache"
    _mini_tree(data_dir)
    shutil.rmtree(data_dir / "train" / "n02")
    shutil.rmtree(data_dir / "train" / "n03")
    assert load_miniimagenet(data_dir, cache_dir=cache_dir)["train"].names == ("n01",)
    _mini_tree(data_dir)  # the missing classes arrive
    assert load_miniimagenet(data_dir, cache_dir=cache_dir)["train"].names == ("n01", "n02", "n03")
    # A second source never replaces the first one's cache.
    shutil.copytree(data_dir, tmp_path / "copy")
    load_miniimagenet(tmp_path / "copy", cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.json"))) == 2
    _block_pillow(monkeypatch)
    assert load_miniimagenet(data_dir, cache_dir=cache_dir)["val"].names == ("n04", "n05")


# ---------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_fast():
    start = time.perf_counter()
    data = make_synthetic(100, 20, seed=3)
    assert time.perf_counter() - start < 0.2
    assert data.images.shape == (100, 20, 1, 28, 28) and data.images.dtype == np.uint8
    assert set(np.unique(data.images)) == {0, 255}
    np.testing.assert_array_equal(make_synthetic(100, 20, seed=3).images, data.images)
    assert not np.array_equal(make_synthetic(100, 20, seed=4).images, data.images)
    colour = make_synthetic(4, 2, size=84, channels=3)
    assert colour.images.shape == (4, 2, 3, 84, 84)


def test_synthetic_classes_are_learnable_but_samples_vary():
    data = make_synthetic(20, 20, seed=0)
    x = data.images[:, :, 0].astype(float).reshape(20, 20, -1) / 255
    # Samples of one class are not copies of each other.
    assert all(len({row.tobytes() for row in x[c]}) == 20 for c in range(20))
    centroids = x[:, :5].mean(axis=1)  # (20, D) from 5 shots
    queries = x[:, 5:].reshape(-1, x.shape[-1])
    distances = ((queries[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == np.repeat(np.arange(20), 15)).mean()
    assert accuracy > 0.3, accuracy  # chance is 0.05


def test_load_synthetic_has_disjoint_classes():
    splits = load_synthetic(num_train_classes=30, num_test_classes=10, samples_per_class=5)
    assert splits["train"].num_classes == 30 and splits["test"].num_classes == 10
    assert not set(splits["train"].names) & set(splits["test"].names)
    with pytest.raises(ValueError, match="^num_test_classes: expected an integer of at least 1"):
        load_synthetic(num_test_classes=0)
