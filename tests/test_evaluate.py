"""Few-shot evaluation (`reptile_np.evaluate`): the protocol, its confidence interval, and
worker processes (`reptile_np.workers`) that give exactly the serial accuracies."""
import concurrent.futures
import dataclasses
import os

import numpy as np
import pytest

from reptile_np import evaluate as evaluation
from reptile_np import models, optim, workers as worker_processes
from reptile_np.data.synthetic import load_synthetic
from reptile_np.data.tasks import sample_task, split_eval_task
from reptile_np.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU
from reptile_np.meta import inner_loop, minibatches
from reptile_np.models import Sequential
from reptile_np.train import TrainConfig


def _problem():
    """Synthetic 16x16 glyphs, a small network of the paper's layer kinds, and an Adam state
    that is not fresh."""
    split = load_synthetic(5, 10, 8, size=16)["test"]
    model = Sequential([Conv2d(1, 8, 3, stride=2, padding="same"), BatchNorm2d(8), ReLU(),
                        Flatten(), Linear(512, 5)], input_shape=(1, 16, 16))
    theta = model.init(np.random.default_rng(0))
    optimizer = _adam(model)
    optimizer.restore({"m": np.zeros(model.num_params), "t": 7,
                       "v": np.full(model.num_params, 1e-4)})
    return split, model, theta, optimizer


def _adam(model):
    return optim.Adam(model.num_params, lr=0.02, beta1=0.0)


def _evaluate(split, model, theta, optimizer, transductive, workers):
    return evaluation.evaluate(model, theta, optimizer, split, 5, 3, 5, 5, 12,
                               np.random.default_rng(3), transductive=transductive,
                               workers=workers)


def _task(split, num_shots=3):
    """A 5-way task of `_problem`'s split with K+1 examples per class, and 4 mini-batches
    of 5 drawn from its N*K support examples."""
    rng = np.random.default_rng(5)
    return sample_task(split, 5, num_shots + 1, rng), minibatches(5 * num_shots, 5, 4, rng)


def test_transductive_and_non_transductive_differ_as_batch_statistics_predict():
    """Non-transductive: each query's prediction comes from the batch support + that query;
    transductive: from the batch of all queries. With batch-statistics BatchNorm the logits
    differ, and each protocol equals its definition computed by hand."""
    rng = np.random.default_rng(0)
    model = models.omniglot_cnn(5)
    phi = model.init(rng, np.float64)
    train_x, query_x = rng.random((10, 1, 28, 28)), rng.random((5, 1, 28, 28))
    non_transductive = evaluation.predict_queries(model, phi, train_x, query_x,
                                                  transductive=False)
    by_hand = [np.argmax(model.forward(phi, np.concatenate([train_x, query_x[q:q + 1]]))[-1])
               for q in range(5)]
    np.testing.assert_array_equal(non_transductive, by_hand)
    np.testing.assert_array_equal(evaluation.predict_queries(model, phi, train_x, query_x, True),
                                  model.predict(phi, query_x))
    # The same query gets different logits in the two batches: BN statistics differ.
    together = model.forward(phi, query_x)[0]
    with_support = model.forward(phi, np.concatenate([train_x, query_x[:1]]))[-1]
    assert not np.allclose(together, with_support)




def test_predict_queries_is_one_pass_per_query_or_one_pass_on_all_queries(monkeypatch):
    """Non-transductive: N passes, pass q on the N*K support examples followed by query q,
    and only its last prediction kept; transductive: one pass on the N queries."""
    split, model, theta, optimizer = _problem()
    task, batches = _task(split)
    train_x, train_y, query_x, _ = split_eval_task(*task, 5)
    phi = inner_loop(model, theta, train_x, train_y, batches, optimizer)
    with_support = [np.concatenate([train_x, query_x[q:q + 1]]) for q in range(5)]
    non_transductive = [model.predict(phi, batch)[-1] for batch in with_support]
    transductive = model.predict(phi, query_x)
    # The protocols disagree on this task, so a mix-up of the two cannot pass.
    assert not np.array_equal(non_transductive, transductive)
    passes = []
    forward = model.forward

    def recording_forward(phi, x):
        passes.append(x)
        return forward(phi, x)
    monkeypatch.setattr(model, "forward", recording_forward)
    np.testing.assert_array_equal(
        evaluation.predict_queries(model, phi, train_x, query_x, False), non_transductive)
    assert len(passes) == 5
    for seen, batch in zip(passes, with_support):
        np.testing.assert_array_equal(seen, batch)
    passes.clear()
    np.testing.assert_array_equal(
        evaluation.predict_queries(model, phi, train_x, query_x, True), transductive)
    assert len(passes) == 1
    np.testing.assert_array_equal(passes[0], query_x)


def test_adapt_and_count_adapts_from_the_given_state_and_restores_it(monkeypatch):
    """phi is the inner loop on the support set from theta and the optimiser state given;
    the count is of phi's correct queries; theta and the optimiser are left as they were."""
    split, model, theta, optimizer = _problem()
    task, batches = _task(split)
    theta_before, state_before = theta.copy(), optimizer.snapshot()
    train_x, train_y, query_x, query_y = split_eval_task(*task, 5)
    by_hand = _adam(model)
    by_hand.restore(state_before)
    phi = inner_loop(model, theta, train_x, train_y, batches, by_hand)
    # Adapting moves the parameters and the step count, so the checks below can fail.
    assert not np.array_equal(phi, theta) and by_hand.t == state_before["t"] + len(batches)
    adapted = []
    predict_queries = evaluation.predict_queries

    def recording_predict_queries(model, phi, *protocol):
        adapted.append(phi)
        return predict_queries(model, phi, *protocol)
    monkeypatch.setattr(evaluation, "predict_queries", recording_predict_queries)
    correct = evaluation.adapt_and_count(model, theta, optimizer, task, batches, 5)
    np.testing.assert_array_equal(adapted[0], phi)
    assert correct == np.sum(predict_queries(model, phi, train_x, query_x, False) == query_y)
    np.testing.assert_array_equal(theta, theta_before)
    after = optimizer.snapshot()
    assert sorted(after) == sorted(state_before)
    for key, value in state_before.items():
        np.testing.assert_array_equal(after[key], value)


@pytest.mark.parametrize("transductive", [False, True])
def test_workers_give_the_serial_accuracies(backend, transductive):
    split, model, theta, optimizer = _problem()
    before = optimizer.snapshot()
    serial = _evaluate(split, model, theta, optimizer, transductive, workers=1)
    parallel = _evaluate(split, model, theta, optimizer, transductive, workers=2)
    np.testing.assert_array_equal(parallel[2], serial[2])
    assert parallel[:2] == serial[:2]
    # The workers adapted from this optimiser state (a fresh one changes the result), and
    # the caller's optimiser is left as it was.
    fresh = _adam(model)
    assert not np.array_equal(_evaluate(split, model, theta, fresh, transductive, 1)[2], serial[2])
    assert optimizer.t == before["t"]
    np.testing.assert_array_equal(optimizer.v, before["v"])


def test_workers_leave_the_thread_settings_of_this_process_alone(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    split, model, theta, optimizer = _problem()
    _evaluate(split, model, theta, optimizer, False, workers=2)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and "OMP_NUM_THREADS" not in os.environ


def test_workers_see_one_thread_each():
    with worker_processes.worker_pool(2, None) as pool:
        seen = list(pool.map(os.getenv, ["OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"]))
    assert seen == ["1", "1"]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    split, model, theta, optimizer = _problem()
    with pytest.raises(ValueError, match="workers"):
        _evaluate(split, model, theta, optimizer, False, workers)


class _RecordingPool:
    """Runs each submitted call at once and counts the calls."""
    submitted = 0

    def submit(self, call, function, item):
        self.submitted += 1
        future = concurrent.futures.Future()
        future.set_result(function(None, item))
        return future


def test_in_order_keeps_the_task_order_and_bounds_the_waiting_tasks():
    pool = _RecordingPool()
    results = worker_processes._in_order(pool, _second, iter(range(10)), in_flight=3)
    for done, value in enumerate(results):
        assert value == done and pool.submitted - done <= 3
    assert pool.submitted == 10
    assert list(worker_processes._in_order(_RecordingPool(), _second, iter([]), 3)) == []


def _second(context, item):
    return item


def test_mean_confidence_interval():
    mean_confidence_interval = evaluation.mean_confidence_interval
    values = [0.2, 0.4, 0.4, 1.0]
    mean, half = mean_confidence_interval(values)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(1.96 * np.std(values) / 2)
    with pytest.raises(ValueError, match="^values:"):
        mean_confidence_interval([])


def test_evaluate_splits_draws_each_split_from_its_own_seed():
    from reptile_np.train import TrainConfig
    split, model, theta, optimizer = _problem()
    config = TrainConfig(num_classes=5, num_shots=3, eval_batch_size=5, eval_iters=5, seed=4)
    results = evaluation.evaluate_splits(model, theta, optimizer, {"a": split, "b": split},
                                         config, 12)
    for index, name in enumerate("ab"):
        accuracy, ci, _ = evaluation.evaluate(model, theta, optimizer, split, 5, 3, 5, 5, 12,
                                              np.random.default_rng([4, 2, index]))
        assert results[name] == {"accuracy": accuracy, "ci95": ci, "tasks": 12}
    assert results["a"] != results["b"]   # the same data, another task stream


@pytest.mark.parametrize("workers", [1, 2])
def test_both_protocols_from_one_adaptation_equal_each_protocol_alone(workers):
    """`evaluate_protocols` adapts once per task for both protocols; each protocol's
    per-task accuracies are exactly those of `evaluate` with that protocol alone. (One
    adaptation step: with more, this small problem's two protocols agree on every task.)"""
    split, model, theta, optimizer = _problem()
    args = (model, theta, optimizer, split, 5, 3, 5, 1, 12)
    together = evaluation.evaluate_protocols(*args, np.random.default_rng(3), (False, True),
                                             workers=workers)
    assert list(together) == [False, True]
    for transductive in (False, True):
        alone = evaluation.evaluate(*args, np.random.default_rng(3), transductive)
        np.testing.assert_array_equal(together[transductive][2], alone[2])
        assert together[transductive][:2] == alone[:2]
    # The two protocols do differ on this problem, so the equality above says something.
    assert not np.array_equal(together[False][2], together[True][2])


def test_evaluate_splits_with_both_protocols_gives_each_split_as_evaluated_alone():
    split, model, theta, optimizer = _problem()
    splits = {"train": split, "test": split}
    config = TrainConfig(num_classes=5, num_shots=3, eval_batch_size=5, eval_iters=1)
    both = evaluation.evaluate_splits(model, theta, optimizer, splits, config, 12,
                                      protocols=(True, False))
    assert sorted(both) == [False, True] and both[False] != both[True]
    for transductive in (False, True):
        alone = evaluation.evaluate_splits(
            model, theta, optimizer, splits,
            dataclasses.replace(config, transductive=transductive), 12)
        assert both[transductive] == alone


@pytest.mark.parametrize("protocols", [(), (True, True), ("yes",), None, 1])
def test_protocols_must_be_distinct_booleans(protocols):
    split, model, theta, optimizer = _problem()
    with pytest.raises(ValueError, match="protocols"):
        evaluation.evaluate_protocols(model, theta, optimizer, split, 5, 3, 5, 5, 2,
                                      np.random.default_rng(3), protocols)
