"""The unfinished training runs kept in ``checkpoints/training/`` (see its README): each
checkpoint loads with its checksums, was trained with its row's command from the README's
table of the paper's experiments, and its log holds every meta-iteration up to the
checkpoint's, once, so that ``train --resume --log`` continues both where they stopped."""
import gzip
import json
import shlex
from pathlib import Path

import pytest

from reptile_np import cli
from reptile_np.checkpoint import load_checkpoint
from reptile_np.release import training_command
from reptile_np.train import TrainConfig, checkpoint_file

REPO = Path(__file__).resolve().parent.parent
RUNS = sorted(path.parent for path in REPO.glob("checkpoints/training/*/checkpoint.npz"))
ROWS = {"omniglot-1s5w": "Omniglot 1-shot 5-way", "omniglot-1s20w": "Omniglot 1-shot 20-way",
        "omniglot-5s20w": "Omniglot 5-shot 20-way"}


def readme_command(row):
    """The `reptile-np train` command of a paper row in the README's table."""
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {row} | `reptile-np train "):
            return line.split("`")[1]
    raise AssertionError(f"the README has no command for {row}")


def training_flags(command):
    """Every TrainConfig field as ``command`` sets it (the defaults where it says nothing)."""
    given = vars(cli.build_parser().parse_args(shlex.split(command)[1:]))
    defaults = TrainConfig()
    return {field: given.get(dest, getattr(defaults, field))
            for dest, field in cli.CONFIG_FIELDS.items()}


def test_every_kept_run_is_a_row_of_the_papers_table():
    assert RUNS and {path.name for path in RUNS} <= set(ROWS)


@pytest.mark.parametrize("run", RUNS, ids=[path.name for path in RUNS])
def test_a_kept_run_resumes_from_its_rows_command_with_its_whole_log(run):
    _, _, metadata = load_checkpoint(checkpoint_file(str(run)))
    assert metadata["verified"]
    assert training_flags(training_command(metadata)) == training_flags(readme_command(ROWS[run.name]))
    with gzip.open(run / "log.jsonl.gz", "rt", encoding="utf-8") as log:
        iterations = [json.loads(line)["iteration"] for line in log]
    assert iterations == list(range(1, metadata["iteration"] + 1))
