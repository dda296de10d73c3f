"""Write an N-way K-shot task of unseen Omniglot characters as folders for ``reptile-np predict``.

    python3 examples/omniglot_task_folders.py DATA_DIR OUT [--classes 5] [--shots 5] [--queries 2] [--seed 0]
    reptile-np predict --checkpoint checkpoints/omniglot-5w5s --support OUT/support --query OUT/query

``DATA_DIR`` holds the Omniglot release zips (``images_background.zip``,
``images_evaluation.zip``, as ``reptile-np fetch-data omniglot`` leaves them). The script
picks ``--classes`` characters of the paper split's meta-test set (the 423 characters a
checkpoint trained with ``--split paper --seed 0`` never saw) and copies each one's
first ``--shots`` drawings of the release into ``OUT/support/<Alphabet>-<characterNN>/``
and the next ``--queries`` into ``OUT/query/<Alphabet>-<characterNN>/``, the PNGs as
they are in the release (105x105, 1 bit): ``predict`` reads them as the Omniglot loader does.
"""
import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from reptile_np.data.omniglot import ALPHABETS, DRAWINGS, load_omniglot


def write_task_folders(data_dir, out, classes=5, shots=5, queries=2, seed=0, cache_dir=None):
    """Write ``out/support`` and ``out/query`` (see the module docstring).

    Args:
        data_dir: The directory of the Omniglot release zips.
        out: Where to create ``support/`` and ``query/`` (which must not exist yet).
        classes, shots, queries: N, the support drawings and the query drawings per class
            (shots + queries at most the release's 20).
        seed: Chooses the characters among the meta-test ones.
        cache_dir: The decoded cache's directory, as for `load_omniglot`.

    Returns:
        ``(support, query)``, the two folders, and the characters ("Alphabet/characterNN")
        in the order of their folder names (the label order of ``predict``).

    Raises:
        ValueError: a count out of range, or ``out/support`` or ``out/query`` exists.
    """
    if not (1 <= classes and 1 <= shots and 1 <= queries and shots + queries <= DRAWINGS):
        raise ValueError(f"need classes, shots and queries of at least 1 and shots + queries "
                         f"at most {DRAWINGS}, got {classes}, {shots}, {queries}.")
    out = Path(out)
    support, query = out / "support", out / "query"
    for folder in (support, query):
        if folder.exists():
            raise ValueError(f"{folder} exists already; choose another OUT.")
    test = load_omniglot(data_dir, cache_dir=cache_dir)["test"].names  # "Alphabet/charNN/rot000"
    chosen = np.random.default_rng(seed).choice(len(test), classes, replace=False)
    characters = sorted((test[i].rsplit("/", 1)[0] for i in chosen), key=_folder_name)
    for source, alphabets in ALPHABETS.items():
        with zipfile.ZipFile(Path(data_dir) / f"{source}.zip") as archive:
            for character in characters:
                if character.split("/")[0] not in alphabets:
                    continue
                prefix = f"{source}/{character}/"
                drawings = sorted(name for name in archive.namelist()
                                  if name.startswith(prefix) and name.endswith(".png"))
                for index, name in enumerate(drawings[:shots + queries]):
                    folder = (support if index < shots else query) / _folder_name(character)
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / name.rsplit("/", 1)[1]).write_bytes(archive.read(name))
    return support, query, characters


def _folder_name(character):
    """"Alphabet/character07" -> "Alphabet-character07": one folder per class."""
    return character.replace("/", "-")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="omniglot_task_folders.py", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of the Omniglot release zips")
    parser.add_argument("out", metavar="OUT", help="where to write support/ and query/")
    parser.add_argument("--classes", type=int, default=5, help="N (default: 5)")
    parser.add_argument("--shots", type=int, default=5, help="support drawings per class (default: 5)")
    parser.add_argument("--queries", type=int, default=2, help="query drawings per class (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the characters (default: 0)")
    args = parser.parse_args(argv)
    try:
        support, query, characters = write_task_folders(args.data_dir, args.out, args.classes,
                                                        args.shots, args.queries, args.seed)
    except (ValueError, ImportError, OSError) as error:
        print(f"omniglot_task_folders.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"{len(characters)} unseen characters, {args.shots} support and {args.queries} query "
          f"drawings each: --support {support} --query {query}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
