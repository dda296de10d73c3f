"""``--threads auto``: the kernels use the cores other processes leave free
(`reptile_np.kernels.adapt_threads`, measured by `reptile_np.runtime.OtherProcessesLoad`),
and a training's numbers do not depend on the counts it switched between."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from reptile_np import cli, kernels, models, runtime
from reptile_np.data.synthetic import make_synthetic
from reptile_np.train import TrainConfig, make_optimizer, meta_train

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_line(busy_s, idle_s):
    """A /proc/stat first line whose user time is ``busy_s`` and idle time ``idle_s``
    (guest time, the ninth field, is part of user time and must not count twice)."""
    return (f"cpu  {int(busy_s * TICKS)} 0 0 {int(idle_s * TICKS)} 0 0 0 0 "
            f"{int(busy_s * TICKS)} 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")


class _Clock:
    """Stand-ins for time.monotonic and time.process_time that the test moves."""

    def __init__(self):
        self.wall, self.cpu = 100.0, 5.0


@pytest.fixture
def clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock.wall)
    monkeypatch.setattr(runtime.time, "process_time", lambda: clock.cpu)
    return clock


def test_other_processes_load_is_busy_time_minus_ours_over_wall_time(tmp_path, clock):
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(busy_s=50, idle_s=500))
    load = runtime.OtherProcessesLoad(str(stat))
    # 2 s later: the machine's CPUs were busy 3 s in all, 1 s of it ours.
    stat.write_text(_stat_line(busy_s=53, idle_s=501))
    clock.wall, clock.cpu = 102.0, 6.0
    assert load.others() == pytest.approx(1.0)
    # Then 1 s in which we were the only busy process (our CPU time equals the busy time).
    stat.write_text(_stat_line(busy_s=54, idle_s=502))
    clock.wall, clock.cpu = 103.0, 7.0
    assert load.others() == pytest.approx(0.0)


def test_other_processes_load_is_none_without_a_readable_stat_file(tmp_path, clock):
    assert runtime.OtherProcessesLoad(str(tmp_path / "missing")).others() is None
    garbled = tmp_path / "stat"
    garbled.write_text("intr 1 2 3\n")
    assert runtime.OtherProcessesLoad(str(garbled)).others() is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")
def test_a_busy_process_is_seen_as_about_one_cpu():
    load = runtime.OtherProcessesLoad()
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        load.others()           # from here on the competitor runs the whole interval
        time.sleep(1.0)
        others = load.others()
    finally:
        competitor.kill()
        competitor.wait()
    assert 0.8 <= others <= len(os.sched_getaffinity(0)) + 0.2


class _ScriptedLoad:
    """Stands in for the other processes' load: each reading is the next value."""

    def __init__(self, values):
        self.values = list(values)

    def others(self):
        return self.values.pop(0)


@pytest.fixture
def numba_kernels():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads (NUMBA_NUM_THREADS >= 2)")
    previous = kernels.get_backend()
    kernels.set_backend("numba")
    yield numba
    kernels.set_threads(1)
    kernels.set_backend(previous)


def _adaptive(values, cores=2, most=2):
    """set_threads(most, adaptive=True) on a machine of ``cores`` whose others' load reads
    ``values``, re-read at every call."""
    kernels.set_threads(most, adaptive=True)
    state = kernels._backend["adaptive"]
    state.load, state.cores, state.interval = _ScriptedLoad(values), cores, 0.0


def test_adapt_threads_uses_the_cores_the_others_leave_free(numba_kernels):
    # 0.6-0.7: one busy process beside our 2 threads; 1.0 beside our 1; None: unknown.
    _adaptive([0.0, 0.65, 1.0, None, 0.3, 1.6, 2.0])
    seen = []
    for _ in range(7):
        seen.append(kernels.adapt_threads())
        assert numba_kernels.get_num_threads() == seen[-1]
    assert seen == [2, 1, 1, 1, 2, 1, 1]
    assert kernels.describe_threads().startswith("up to 2 threads, fewer while")


def test_adapt_threads_never_goes_above_the_count_set(numba_kernels):
    _adaptive([0.0, 0.0], cores=4, most=2)
    assert [kernels.adapt_threads(), kernels.adapt_threads()] == [2, 2]


def test_adapt_threads_waits_for_its_interval(numba_kernels):
    _adaptive([1.0])
    kernels._backend["adaptive"].interval = 3600.0
    assert kernels.adapt_threads() == 2        # no reading yet: the script is untouched


def test_fixed_counts_and_the_numpy_kernels_do_not_adapt(numba_kernels):
    kernels.set_threads(2)
    assert kernels.adapt_threads() == 2
    kernels.set_backend("numpy")
    _adaptive([2.0])
    assert kernels.adapt_threads() == 2        # OpenBLAS's threads would change the bits


def test_a_training_that_switches_thread_counts_gives_the_one_thread_bits(numba_kernels):
    """meta_train adapts once per meta-iteration; going back and forth between 1 and 2
    threads leaves theta and the Adam state exactly as one thread throughout."""
    splits = {"train": make_synthetic(6, 4, seed=1), "test": make_synthetic(6, 4, seed=2)}
    model = models.omniglot_cnn(3)
    config = TrainConfig(num_classes=3, num_shots=2, inner_batch_size=4, inner_iters=2,
                         meta_batch_size=2, meta_iters=6, eval_interval=3)
    results = []
    for adaptive in (False, True):
        if adaptive:
            _adaptive([0.0, 1.5, 0.0, 1.5, 0.0, 1.5])
        else:
            kernels.set_threads(1)
        optimizer = make_optimizer(config, model.num_params, np.float32)
        theta = meta_train(model, model.init(np.random.default_rng(0)), optimizer, splits,
                           config)
        results.append((theta, optimizer.snapshot()))
    assert kernels._backend["adaptive"].load.values == []   # it did switch, 6 times
    (theta_one, state_one), (theta_adaptive, state_adaptive) = results
    np.testing.assert_array_equal(theta_adaptive, theta_one)
    for name in ("m", "v"):
        np.testing.assert_array_equal(state_adaptive[name], state_one[name])


def test_threads_flag_takes_auto(numba_kernels, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["sine", "--threads", "auto"])
    assert args.threads == "auto"
    cli.apply_threads_flag(args.threads)
    assert kernels._backend["adaptive"].most == numba_kernels.config.NUMBA_NUM_THREADS
    for bad in ("some", "0"):
        with pytest.raises(SystemExit):
            parser.parse_args(["sine", "--threads", bad])
    assert "expected a positive integer or auto, got 'some'" in capsys.readouterr().err


def test_auto_gives_openblas_one_thread_under_the_numpy_kernels(numba_kernels):
    threads = pytest.importorskip("reptile_np.threads")
    if threads.blas_info()["threads"] is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS reptile_np.threads reaches")
    cli.apply_threads_flag("auto")
    kernels.set_backend("numpy")           # as --backend numpy does, after --threads
    assert threads.blas_info()["threads"] == 1
    assert kernels.describe_threads().startswith("1 BLAS thread (")
