"""The Dask executor (`reptile_np.dist`) on a real local cluster: the serial results bit for
bit, and one clear error, within seconds, for each way a cluster fails."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the dist extra (dask[distributed]) "
                                                        "is not installed")

import dask  # noqa: E402

from reptile_np import __version__, cli, dist, kernels, optim, threads, train  # noqa: E402
from reptile_np import evaluate as evaluation  # noqa: E402
from reptile_np.data.synthetic import load_synthetic  # noqa: E402
from reptile_np.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU  # noqa: E402
from reptile_np.models import Sequential  # noqa: E402
from reptile_np.workers import THREAD_VARIABLES  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each on 127.0.0.1, for the whole module (without
    Dask's pre-spawn environment, which would be written into this process's). A task may
    lose one worker and be rerun, not three (Dask's default), to keep the test of a task
    that kills every worker short."""
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {},
                          "distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                     host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster, timeout=30) as connected:
        connected.wait_for_workers(2, timeout=30)
        yield connected


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """This process's BLAS on one thread, as the workers' (and as the command line pins it):
    with some OpenBLAS kernels the last bits depend on the thread count."""
    before = threads.blas_info()["threads"]
    threads.set_threads(1)
    yield
    if before:
        threads.set_threads(before)


@pytest.fixture
def executor(client):
    """Chunks of 3 items, so a dozen items make chunks on both workers."""
    return dist.DaskExecutor(client, chunk_size=3)


def _problem():
    """Synthetic 16x16 glyphs, a small network of the paper's layer kinds and an Adam state
    that is not fresh (so that adapting from the wrong state would show)."""
    splits = load_synthetic(8, 8, 6, size=16, seed=1)
    model = Sequential([Conv2d(1, 8, 3, stride=2, padding="same"), BatchNorm2d(8), ReLU(),
                        Flatten(), Linear(512, 5)], input_shape=(1, 16, 16))
    theta = model.init(np.random.default_rng(0), np.float32)
    optimizer = optim.Adam(model.num_params, lr=0.02, beta1=0.0)
    optimizer.restore({"m": np.zeros(model.num_params), "t": 7,
                       "v": np.full(model.num_params, 1e-4)})
    return splits, model, theta, optimizer


def _evaluate(splits, model, theta, optimizer, transductive, workers):
    return evaluation.evaluate(model, theta, optimizer, splits["test"], 5, 3, 5, 4, 10,
                               np.random.default_rng(3), transductive=transductive,
                               workers=workers)


@pytest.mark.parametrize("transductive", [False, True])
def test_cluster_evaluation_is_the_serial_one(backend, executor, transductive):
    splits, model, theta, optimizer = _problem()
    before = optimizer.snapshot()
    serial = _evaluate(splits, model, theta, optimizer, transductive, workers=1)
    cluster = _evaluate(splits, model, theta, optimizer, transductive, workers=executor)
    np.testing.assert_array_equal(cluster[2], serial[2])
    assert len(set(cluster[2])) > 1  # tasks that differ, so that an order mix-up would show
    assert optimizer.t == before["t"]
    np.testing.assert_array_equal(optimizer.v, before["v"])


def _worker_settings(context, item):
    return kernels.get_backend(), threads.blas_info()["threads"], os.getpid()


def test_every_chunk_runs_with_the_clients_backend_and_one_blas_thread(backend, executor):
    seen = list(executor.map(_worker_settings, range(12), None))
    assert {(name, count) for name, count, _ in seen} == {(backend, 1)}
    assert len({pid for _, _, pid in seen}) == 2  # both workers took chunks


def test_a_local_cluster_leaves_the_thread_settings_of_this_process_alone(monkeypatch):
    """connect("local:N"): its workers compute with one BLAS thread, and this process's
    thread and allocator variables are as they were (Dask's default pre-spawn environment
    would set them here)."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    watched = (*THREAD_VARIABLES, "MALLOC_TRIM_THRESHOLD_")
    before = {name: os.environ.get(name) for name in watched}
    with dist.connect("local:1", worker_threads=1) as executor:
        assert {count for _, count, _ in executor.map(_worker_settings, range(2), None)} == {1}
    assert {name: os.environ.get(name) for name in watched} == before


def test_parallel_meta_batch_equals_its_serial_twin(executor):
    """train --parallel-tasks: theta and the carried Adam state after every meta-iteration
    are those of the in-process run of the same semantics."""
    splits, model, _, _ = _problem()
    config = train.TrainConfig(num_classes=5, num_shots=2, inner_batch_size=5, inner_iters=3,
                               meta_batch_size=5, meta_iters=3, parallel_tasks=True)
    runs = {}
    for where in (None, executor):
        theta = model.init(np.random.default_rng(0), np.float32)
        optimizer = train.make_optimizer(config, model.num_params, np.float32)
        runs[where] = []
        for iteration in range(config.meta_iters):
            theta, _ = train.meta_iteration(model, theta, optimizer, splits["train"], config,
                                            iteration, where)
            runs[where].append((theta, optimizer.snapshot()))
    for (serial_theta, serial_state), (cluster_theta, cluster_state) in zip(*runs.values()):
        np.testing.assert_array_equal(cluster_theta, serial_theta)
        for key in ("m", "v", "t"):
            np.testing.assert_array_equal(cluster_state[key], serial_state[key])
    assert not np.array_equal(runs[None][0][0], runs[None][-1][0])
    # And it is not the paper's chained Adam state (which the test would then not tell apart).
    chained = train.make_optimizer(config, model.num_params, np.float32)
    paper_config = train.TrainConfig(**{**vars(config), "parallel_tasks": False})
    paper_theta, _ = train.meta_iteration(model, model.init(np.random.default_rng(0), np.float32),
                                          chained, splits["train"], paper_config, 0)
    assert not np.array_equal(paper_theta, runs[None][0][0])


def test_train_parallel_tasks_on_the_scheduler_is_the_serial_run(client, tmp_path):
    """`train --parallel-tasks --scheduler`: the meta-batches and the final evaluation run
    on the cluster, and the checkpoint and the accuracies are the serial run's."""
    flags = [*SWEEP_RUN[:SWEEP_RUN.index("--meta-iters")], "--meta-iters", "4",
             "--eval-samples", "6", "--parallel-tasks"]
    assert cli.main(["train", *flags, "--checkpoint", str(tmp_path / "serial")]) == 0
    with distributed.get_task_stream(client) as stream:
        assert cli.main(["train", *flags, "--checkpoint", str(tmp_path / "cluster"),
                         "--scheduler", client.scheduler.address]) == 0
    # The cluster did the work: 4 meta-batches of 2 tasks dealt out to the 2 workers, one
    # chunk each, and 2 splits of 6 evaluation tasks, one chunk each.
    assert sum(task["key"].startswith("run_chunk") for task in stream.data) == 4 * 2 + 2
    serial, cluster = (np.load(tmp_path / run / "checkpoint.npz") for run in ("serial", "cluster"))
    for member in ("theta", "optimizer/m", "optimizer/v", "optimizer/t"):
        np.testing.assert_array_equal(cluster[member], serial[member])
    results = [json.loads((tmp_path / name / "results-2shot-nontransductive.json").read_text())
               for name in ("serial", "cluster")]
    assert results[0]["results"] == results[1]["results"]


def _die_once(marker, item):
    """The item back; the first call (of any worker) SIGKILLs its own worker process."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return item
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_chunk_whose_worker_dies_is_rerun_elsewhere(executor, tmp_path):
    start = time.monotonic()
    assert list(executor.map(_die_once, range(6), str(tmp_path / "died"))) == list(range(6))
    assert (tmp_path / "died").exists() and time.monotonic() - start < 30


def _always_die(context, item):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_chunk_that_kills_every_worker_is_one_line(executor):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="Dask gave up on a chunk of work: every worker "
                                              "that ran it, or held its context, died"):
        list(executor.map(_always_die, range(1), None))
    assert time.monotonic() - start < 30
    executor.client.wait_for_workers(2, timeout=30)  # the nannies restart them, for the next tests


def test_unreachable_scheduler_is_one_line_within_seconds():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="--scheduler tcp://127.0.0.1:9: no Dask scheduler "
                                              "answered within 2 s"):
        with dist.connect("tcp://127.0.0.1:9", timeout=2):
            pass
    assert time.monotonic() - start < 10


def test_the_command_line_says_so_in_one_line(tmp_path):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reptile_np", "eval", "--checkpoint",
                           str(tmp_path), "--scheduler", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no Dask scheduler answered" in done.stderr
    assert time.monotonic() - start < 30


def test_a_scheduler_without_workers_is_one_line(client):
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as empty:
        with pytest.raises(ConnectionError, match="the scheduler has no workers"):
            with dist.connect(empty.scheduler_address, timeout=1):
                pass


def test_workers_of_other_versions_are_refused(client, monkeypatch):
    dist.check_workers(client, "local:2")  # the same versions pass
    monkeypatch.setattr(dist, "__version__", "0.0.0-other")
    with pytest.raises(ValueError, match=rf"worker tcp://127\.0\.0\.1:\d+ runs reptile-np "
                                         rf"{re.escape(__version__)}, this process 0\.0\.0-other"):
        dist.check_workers(client, "local:2")


def test_a_worker_without_numba_refuses_the_numba_kernels(monkeypatch):
    monkeypatch.setattr(kernels, "get_backend", lambda: "numpy")
    monkeypatch.setattr(kernels, "set_backend", lambda name: "numpy")  # as without Numba
    with pytest.raises(ImportError, match="cannot run the numba kernels: Numba does not import"):
        dist.prepare_worker("numba", 1)


def test_without_distributed_the_scheduler_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'reptile-np\[dist\]'"):
        dist.distributed_module()


SWEEP_RUN = ["--dataset", "synthetic", "--classes", "3", "--shots", "2", "--inner-batch", "4",
             "--inner-iters", "2", "--meta-batch", "2", "--eval-batch", "3", "--eval-iters", "3",
             "--meta-iters", "40", "--checkpoint-every", "4", "--eval-samples", "3"]
"""A short synthetic run: 40 meta-iterations (a second or two), a checkpoint every 4."""


def _sweep(client, out, grid, train_flags):
    """``reptile-np sweep`` in a subprocess on the module's cluster (started, not awaited)."""
    return subprocess.Popen([sys.executable, "-m", "reptile_np", "sweep", "--scheduler",
                             client.scheduler.address, "--out", str(out), "--grid", grid, "--",
                             *train_flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPOSITORY,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})


def _kill_the_worker_of_a_run_in_training(client, out, timeout=60):
    """SIGKILL the worker of a sweep run that has checkpointed but not finished training;
    returns the run's name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            for key in keys:
                name = str(key).removeprefix("sweep-run-")
                log = out / name / "log.jsonl"
                done = len(log.read_text().splitlines()) if log.exists() else 0
                if (out / name / "checkpoint.npz").exists() and 8 <= done <= 32:
                    [pid] = client.run(os.getpid, workers=[worker]).values()
                    os.kill(pid, signal.SIGKILL)
                    return name
        time.sleep(0.02)
    raise AssertionError("no sweep run was caught mid-training")


def test_a_sweep_survives_a_killed_worker_with_the_undisturbed_results(client, tmp_path):
    """2 x 2 runs; the worker of one of them is killed mid-training. The sweep finishes, the
    killed run resumed from its checkpoint, and every run's final theta is that of the same
    train command run here, undisturbed. (About 20 s: five short trainings, twice.)"""
    out = tmp_path / "sweep"
    sweep = _sweep(client, out, "learning-rate=1e-3,5e-4 seed=0,1", SWEEP_RUN)
    killed = _kill_the_worker_of_a_run_in_training(client, out)
    stdout, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, stderr
    assert "sweep runs 4/4" in stderr and "failed=0" in stderr
    runs = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert runs == ["learning-rate=1e-3_seed=0", "learning-rate=1e-3_seed=1",
                    "learning-rate=5e-4_seed=0", "learning-rate=5e-4_seed=1"]
    assert "loaded" in (out / killed / "output.txt").read_text()  # resumed, not started again
    for name in runs:
        flags = dict(part.split("=") for part in name.split("_"))
        undisturbed = tmp_path / "undisturbed" / name
        assert cli.main(["train", *SWEEP_RUN, "--learning-rate", flags["learning-rate"],
                         "--seed", flags["seed"], "--checkpoint", str(undisturbed),
                         "--eval-samples", "0"]) == 0
        np.testing.assert_array_equal(np.load(out / name / "checkpoint.npz")["theta"],
                                      np.load(undisturbed / "checkpoint.npz")["theta"])
    table = json.loads((out / "table.json").read_text())
    assert [(row["flags"], row["finished"], row["seeds"]) for row in table] == [
        ({"learning-rate": "1e-3"}, 2, ["0", "1"]), ({"learning-rate": "5e-4"}, 2, ["0", "1"])]
    accuracies = [json.loads((out / f"learning-rate=1e-3_seed={seed}" / "results.json")
                             .read_text())["results"]["test"]["accuracy"] for seed in (0, 1)]
    assert table[0]["accuracy"]["test"]["mean"] == pytest.approx(np.mean(accuracies), abs=1e-15)
    # Rerun: everything is finished, nothing runs again.
    again = _sweep(client, out, "learning-rate=1e-3,5e-4 seed=0,1", SWEEP_RUN)
    stdout, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and "4 runs, 4 finished before" in stdout


def test_a_failed_run_is_reported_with_its_reason(client, tmp_path):
    out = tmp_path / "sweep"
    assert SWEEP_RUN[2:4] == ["--classes", "3"]
    short = [*SWEEP_RUN[:2], *SWEEP_RUN[4:SWEEP_RUN.index("--meta-iters")], "--meta-iters", "2",
             "--eval-samples", "1"]
    sweep = _sweep(client, out, "classes=3,101", short)  # the synthetic test split has 100
    stdout, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 1, stderr
    assert "- classes=101: exit status 2: " in stdout and "--classes 101 is more than" in stdout
    table = json.loads((out / "table.json").read_text())
    assert [(row["flags"], row["finished"], len(row["failed"])) for row in table] == [
        ({"classes": "3"}, 1, 0), ({"classes": "101"}, 0, 1)]
