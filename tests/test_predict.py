"""`reptile-np predict` on support and query folders of the shared Omniglot PNGs (written by
examples/omniglot_task_folders.py, which these tests thereby run): it is
one evaluation task, the images read exactly as the Omniglot loader stores them, adapted
with the checkpoint's settings and Adam state (checked against a by-hand adaptation from
the decoded cache), deterministic per seed; and every bad input is one line naming its flag.

The checkpoint is the Omniglot network meta-trained for 6 iterations on synthetic glyphs:
predictions are about plumbing here, not accuracy (the released checkpoint's accuracy is
test_release.py's)."""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import OMNIGLOT_DIR
from reptile_np import cli
from reptile_np.data.omniglot import load_characters
from reptile_np.data.tasks import to_float
from reptile_np.evaluate import adapt, query_logits
from reptile_np.losses import softmax
from reptile_np.meta import minibatches
from reptile_np.predict import predict
from reptile_np.release import load_trained
from test_cli_runs import trained  # noqa: F401 (a fixture: a finished 6-iteration run)
from test_train_cli import run_cli

Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_blas_thread")

CLASSES, SHOTS, QUERIES = 3, 2, 2   # the checkpoint's 3-way; 2 support, 2 query drawings each


@pytest.fixture(scope="module")
def checkpoint(trained):
    """An Omniglot-network checkpoint (3-way, eval-batch 3, eval-iters 3, Adam state)."""
    return trained[0]


def _example(name):
    """A module of examples/ (a script directory, not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def task(tmp_path_factory, omniglot_cache):
    """support/ and query/ folders of three meta-test characters (SHOTS and QUERIES
    drawings each, the release's PNGs), by examples/omniglot_task_folders.py, and the
    characters in label order."""
    write = _example("omniglot_task_folders").write_task_folders
    return write(OMNIGLOT_DIR, tmp_path_factory.mktemp("task"), CLASSES, SHOTS, QUERIES,
                 cache_dir=omniglot_cache)


@pytest.fixture
def characters(task):
    return task[2]


@pytest.fixture
def folders(tmp_path, task):
    """A fresh copy of the support and query folders, for a test to change."""
    return tuple(Path(shutil.copytree(path, tmp_path / path.name)) for path in task[:2])


@pytest.mark.parametrize("transductive", [False, True])
def test_predictions_are_an_evaluation_task_on_the_omniglot_loaders_pixels(
        checkpoint, folders, characters, omniglot_cache, transductive):
    support, query = folders
    result = predict(checkpoint, support, query, seed=3, transductive=transductive)

    # By hand: the same drawings from the Omniglot loader's cache, the checkpoint's
    # evaluation settings, its Adam state, mini-batches from default_rng(seed).
    images, names = load_characters(OMNIGLOT_DIR, cache_dir=omniglot_cache)
    rows = [names.index(character) for character in characters]
    cached = images[rows][:, :, None]                           # (N, 20, 1, 28, 28) uint8
    model, theta, optimizer, config, _ = load_trained(checkpoint)
    support_x = to_float(cached[:, :SHOTS].reshape(-1, 1, 28, 28), theta.dtype)
    query_x = to_float(cached[:, SHOTS:SHOTS + QUERIES].reshape(-1, 1, 28, 28), theta.dtype)
    support_y = np.repeat(np.arange(CLASSES), SHOTS)
    batches = minibatches(len(support_y), config.eval_batch_size, config.eval_iters,
                          np.random.default_rng(3))
    phi = adapt(model, theta, optimizer, support_x, support_y, batches)
    expected = softmax(query_logits(model, phi, support_x, query_x, transductive))

    np.testing.assert_array_equal(result.probabilities, expected)
    # Class j is the j-th support folder in sorted order.
    assert result.classes == tuple(character.replace("/", "-") for character in characters)
    np.testing.assert_array_equal(result.labels, np.repeat(np.arange(CLASSES), QUERIES))
    assert [path.parent.name for path in result.paths] == \
        [result.classes[label] for label in result.labels]


def test_the_checkpoints_protocol_is_the_default_and_seeds_decide(checkpoint, folders):
    support, query = folders
    default = predict(checkpoint, support, query)
    assert not load_trained(checkpoint)[3].transductive
    np.testing.assert_array_equal(default.probabilities,
                                  predict(checkpoint, support, query, transductive=False).probabilities)
    assert not np.array_equal(default.probabilities,
                              predict(checkpoint, support, query, transductive=True).probabilities)
    again = predict(checkpoint, support, query, seed=0)
    np.testing.assert_array_equal(default.probabilities, again.probabilities)
    other = predict(checkpoint, support, query, seed=1)
    assert not np.array_equal(default.probabilities, other.probabilities)
    for result in (default, other):
        assert result.probabilities.shape == (CLASSES * QUERIES, CLASSES)
        assert result.probabilities.dtype == np.float32
        assert np.all(result.probabilities > 0) and np.all(result.probabilities < 1)
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, rtol=1e-6)


def test_command_prints_each_query_its_class_and_probability_then_the_accuracy(
        checkpoint, folders, capsys):
    support, query = folders
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--support", str(support),
                     "--query", str(query), "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = predict(checkpoint, support, query, seed=3)
    assert len(lines) == len(result.paths) + 1
    for line, path, label, row in zip(lines, result.paths, result.predicted, result.probabilities):
        assert line.split() == [str(path), result.classes[label], f"{row[label]:.3f}"]
    correct = int(np.sum(result.predicted == result.labels))
    assert lines[-1] == f"accuracy: {correct}/{len(result.paths)} = {100 * correct / len(result.paths):.1f}%"

    # A query folder of images alone: the same predictions, no accuracy.
    flat = query.parent / "flat"
    flat.mkdir()
    for path in result.paths:
        (flat / path.name).write_bytes(path.read_bytes())
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--support", str(support),
                     "--query", str(flat), "--seed", "3"]) == 0
    printed = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert printed == {str(flat / path.name): [result.classes[label], f"{row[label]:.3f}"]
                       for path, label, row in zip(result.paths, result.predicted,
                                                   result.probabilities)}


def _first(folder):
    return sorted(next(iter(sorted(folder.iterdir()))).iterdir())[0]


def _save(path, pixels, mode=None):
    Image.fromarray(pixels, mode).save(path)


@pytest.mark.parametrize("damage, flag, fragment", [
    (lambda s, q, c: _first(s).unlink(), "--support",
     "every class of the support split needs the same number of images"),
    (lambda s, q, c: (s / "extra").mkdir() or _save(s / "extra" / "a.png", np.zeros((28, 28), np.uint8)),
     "--support", "has 4 class folders, but the checkpoint's network tells 3 classes apart"),
    (lambda s, q, c: _first(q).write_bytes(b"not a png"), "--query", "is not a readable image"),
    (lambda s, q, c: _save(_first(s), np.full((40, 40, 3), (255, 0, 0), np.uint8)), "--support",
     "is in colour, but the checkpoint's network reads grayscale images"),
    (lambda s, q, c: _save(_first(q), np.full((27, 60), 255, np.uint8)), "--query",
     "is 60x27 pixels, smaller than the 28x28 the checkpoint's network reads"),
    (lambda s, q, c: (q / "someone-else").mkdir() or _save(q / "someone-else" / "a.png", np.zeros((28, 28), np.uint8)),
     "--query", "the class folder someone-else is not one of the support's classes"),
    (lambda s, q, c: _save(q / "loose.png", np.zeros((28, 28), np.uint8)), "--query",
     "holds both images (loose.png) and class folders"),
    (lambda s, q, c: (c / "checkpoint.npz").unlink(), "--checkpoint", "holds no checkpoint.npz"),
])
def test_bad_input_is_one_line_naming_the_flag(checkpoint, folders, tmp_path, capsys, damage,
                                               flag, fragment):
    support, query = folders
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes((checkpoint / "checkpoint.npz").read_bytes())
    damage(support, query, run)
    assert cli.main(["predict", "--checkpoint", str(run), "--support", str(support),
                     "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"reptile-np predict: error: {flag} " in err, err
    assert fragment in err, err


def test_a_gray_image_in_an_rgb_file_reads_as_its_grayscale(checkpoint, folders):
    support, query = folders
    before = predict(checkpoint, support, query)
    for path in before.paths:  # every query re-saved as RGB with equal channels
        with Image.open(path) as image:
            image.convert("RGB").save(path)
    np.testing.assert_array_equal(predict(checkpoint, support, query).probabilities,
                                  before.probabilities)


def test_the_rgb_network_reads_images_as_the_folder_loader_does(tmp_path):
    """An 84x84 RGB checkpoint (the Mini-ImageNet network, trained on a folder data set):
    predict's pixels are the folder loader's, a grayscale image is taken as RGB (the
    Mini-ImageNet loader converts those too), a smaller image is refused. (About 8 s on a
    busy machine: a training step and four adaptations of the 84x84 network.)"""
    from reptile_np.data.folder import load_folder
    from test_folder_dataset import TINY
    tree, rng = tmp_path / "tree", np.random.default_rng(0)
    for split in ("train", "test"):   # random RGB images of 90 x 84..90 pixels
        for c in range(3):
            (tree / split / f"class{c}").mkdir(parents=True)
            for i in range(3):
                _save(tree / split / f"class{c}" / f"{i}.png",
                      rng.integers(0, 256, (90, 84 + 3 * i, 3), dtype=np.uint8))
    run = tmp_path / "run"
    done = run_cli("train", *TINY, "--data-dir", str(tree), "--image-size", "84", "--channels",
                   "3", "--meta-iters", "1", "--eval-samples", "0", "--checkpoint", str(run),
                   env_backend="numpy")
    assert done.returncode == 0, done.stderr
    support = tree / "train"
    query = tmp_path / "query"
    query.mkdir()
    for index, path in enumerate(sorted((tree / "test" / "class0").iterdir())):
        (query / f"{index}.png").write_bytes(path.read_bytes())
    result = predict(run, support, query, seed=2)

    model, theta, optimizer, config, _ = load_trained(run)
    stored = load_folder(tree, image_size=84, channels=3, cache_dir=tmp_path / "cache")
    support_x = to_float(stored["train"].images.reshape(-1, 3, 84, 84), theta.dtype)
    query_x = to_float(stored["test"].images[0], theta.dtype)
    support_y = np.repeat(np.arange(3), 3)
    batches = minibatches(9, config.eval_batch_size, config.eval_iters, np.random.default_rng(2))
    phi = adapt(model, theta, optimizer, support_x, support_y, batches)
    np.testing.assert_array_equal(
        result.probabilities, softmax(query_logits(model, phi, support_x, query_x, False)))

    with Image.open(query / "0.png") as image:
        image.convert("L").save(query / "0.png")
    gray = predict(run, support, query, seed=2)
    with Image.open(query / "0.png") as image:
        image.convert("RGB").save(query / "0.png")
    np.testing.assert_array_equal(gray.probabilities, predict(run, support, query, seed=2).probabilities)
    _save(query / "0.png", np.zeros((84, 83, 3), np.uint8))
    with pytest.raises(ValueError, match="is 83x84 pixels, smaller than the 84x84"):
        predict(run, support, query)
