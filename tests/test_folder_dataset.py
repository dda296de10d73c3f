"""`--dataset folder`: the user's own DIR/{train,val,test}/<class>/ images, end to end from
the CLI (training, the network each image shape picks, a resume with another shape) and
every layout problem refused with one line naming the folder or file."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from reptile_np import cli
from reptile_np.checkpoint import load_checkpoint
from reptile_np.data.folder import load_folder
from reptile_np.errors import DataError
from reptile_np.train import checkpoint_file

Image = pytest.importorskip("PIL.Image")

TINY = ["--dataset", "folder", "--classes", "3", "--shots", "1", "--train-shots", "2",
        "--inner-batch", "3", "--inner-iters", "1", "--meta-batch", "1", "--eval-batch", "3",
        "--eval-iters", "1"]


def make_tree(root, classes=(4, 3), images=4, splits=("train", "test")):
    """Write `images` random RGB .png of mixed sizes into each class folder of each split."""
    rng = np.random.default_rng(0)
    for split, count in zip(splits, classes):
        for c in range(count):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(images):
                pixels = rng.integers(0, 256, (30, 20 + 5 * i, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def run_cli(tmp_path, *args):
    env = dict(os.environ, REPTILE_NP_BACKEND="numpy", REPTILE_NP_DATA=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "reptile_np.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def refused(capsys, monkeypatch, tmp_path, *args):
    """Run the CLI in this process; assert exit 2 and return its one stderr line."""
    monkeypatch.setenv("REPTILE_NP_DATA", str(tmp_path / "cache"))
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_training_on_a_28x28_grayscale_tree_writes_a_checkpoint(tmp_path):
    tree = make_tree(tmp_path / "tree")
    ckpt = tmp_path / "run"
    done = run_cli(tmp_path, "train", *TINY, "--data-dir", str(tree), "--meta-iters", "2",
                   "--eval-samples", "2", "--checkpoint", str(ckpt))
    assert done.returncode == 0, done.stderr
    metadata = load_checkpoint(checkpoint_file(str(ckpt)))[2]
    run = metadata["config"]
    assert metadata["iteration"] == 2
    assert (run["dataset"], run["image_size"], run["channels"], run["model"]) == \
        ("folder", 28, 1, "omniglot")
    assert (ckpt / "results-1shot-nontransductive.json").is_file()

    # The run's image shape is part of the run: --resume refuses another one.
    again = run_cli(tmp_path, "train", "--resume", "--checkpoint", str(ckpt), "--data-dir",
                    str(tree), "--meta-iters", "3", "--image-size", "84")
    assert again.returncode == 2
    assert "--image-size 84 contradicts the checkpoint's --image-size 28" in again.stderr
    assert load_checkpoint(checkpoint_file(str(ckpt)))[2]["iteration"] == 2


def test_84x84_rgb_trains_the_miniimagenet_network(tmp_path):
    tree = make_tree(tmp_path / "tree")
    ckpt = tmp_path / "run"
    done = run_cli(tmp_path, "train", *TINY, "--data-dir", str(tree), "--image-size", "84",
                   "--channels", "3", "--meta-iters", "1", "--eval-samples", "0",
                   "--checkpoint", str(ckpt))
    assert done.returncode == 0, done.stderr
    run = load_checkpoint(checkpoint_file(str(ckpt)))[2]["config"]
    assert (run["image_size"], run["channels"], run["model"]) == (84, 3, "miniimagenet")


def test_loader_resizes_converts_and_keeps_val_optional(tmp_path):
    tree = make_tree(tmp_path / "tree", classes=(2, 2, 2), images=2,
                     splits=("train", "test", "val"))
    splits = load_folder(tree, image_size=5, channels=3, cache_dir=tmp_path / "c")
    assert set(splits) == {"train", "test", "val"}
    assert splits["train"].images.shape == (2, 2, 3, 5, 5)
    with Image.open(tree / "test" / "class1" / "1.png") as image:
        expected = np.asarray(image.resize((5, 5), Image.Resampling.NEAREST).convert("L"))
    gray = load_folder(tree, image_size=5, channels=1, cache_dir=tmp_path / "c")
    assert gray["test"].images.shape == (2, 2, 1, 5, 5)
    np.testing.assert_array_equal(gray["test"].images[1, 1, 0], expected)

    shutil.rmtree(tree / "val")
    assert set(load_folder(tree, image_size=5, cache_dir=tmp_path / "c")) == {"train", "test"}


def test_unsupported_image_shape_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    ckpt = tmp_path / "run"
    err = refused(capsys, monkeypatch, tmp_path, "train", *TINY, "--data-dir", str(tree),
                  "--image-size", "32", "--checkpoint", str(ckpt))
    assert "--channels 1 --image-size 32 fits none of the networks" in err
    assert "--channels 1 --image-size 28 or --channels 3 --image-size 84" in err
    assert not ckpt.exists() and not (tmp_path / "cache").exists()
    err = refused(capsys, monkeypatch, tmp_path, "train", "--dataset", "synthetic",
                  "--channels", "3", "--checkpoint", str(ckpt))
    assert "--channels 3 applies only to --dataset folder" in err


@pytest.mark.parametrize("damage, fragment", [
    (lambda tree: [p.unlink() for p in (tree / "train" / "class2").iterdir()],
     "the class folder train/class2 holds no .png/.jpg/.jpeg images"),
    (lambda tree: (tree / "train" / "class1" / "3.png").unlink(),
     "but class1 has 3"),
    (lambda tree: (tree / "test" / "class0" / "2.png").write_bytes(b"not a png"),
     "class0/2.png is not a readable image"),
    (lambda tree: (tree / "train" / "class0" / "notes.txt").write_text("hello"),
     "class0/notes.txt is not a .png/.jpg/.jpeg image"),
    (lambda tree: shutil.rmtree(tree / "test"), "has no test/ folder"),
])
def test_layout_problems_are_one_line_naming_data_dir(tmp_path, capsys, monkeypatch, damage,
                                                      fragment):
    tree = make_tree(tmp_path / "tree")
    damage(tree)
    err = refused(capsys, monkeypatch, tmp_path, "train", *TINY, "--data-dir", str(tree),
                  "--meta-iters", "1", "--checkpoint", str(tmp_path / "run"))
    assert f"--data-dir {tree}" in err and fragment in err, err
    # A failed build leaves no cache that a later run could take for a good one.
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_too_few_images_for_the_shots_is_refused(tmp_path, capsys, monkeypatch):
    tree = make_tree(tmp_path / "tree", images=3)
    err = refused(capsys, monkeypatch, tmp_path, "train", *TINY, "--data-dir", str(tree),
                  "--shots", "3", "--train-shots", "0", "--meta-iters", "1",
                  "--checkpoint", str(tmp_path / "run"))
    assert "--shots 3 needs 4 samples per class" in err


def test_folder_without_data_dir_is_refused(tmp_path, capsys, monkeypatch):
    err = refused(capsys, monkeypatch, tmp_path, "train", *TINY, "--meta-iters", "1",
                  "--checkpoint", str(tmp_path / "run"))
    assert "--dataset folder needs --data-dir" in err


def test_loader_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="channels: expected 1"):
        load_folder(tmp_path, channels=2)
    with pytest.raises(DataError, match="has no train/ folder"):
        load_folder(tmp_path, cache_dir=tmp_path / "c")
