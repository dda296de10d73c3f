"""How much a Dask cluster costs and gives: evaluation throughput and the parallel meta-batch.

    python3 bench/dist_scaling.py --tasks 200 --meta-iters 10

Times, in this process (cluster start-up excluded), the same work three ways: here,
serially (`reptile_np.workers.InProcess`), on a ``local:1`` cluster and on ``local:2``
(`reptile_np.dist.connect`):

* evaluation of ``--tasks`` Omniglot-shaped 5-way 5-shot tasks (50 Adam steps of batch 5,
  non-transductive), the paper's protocol, in tasks/s;
* ``train --parallel-tasks`` meta-iterations (`reptile_np.train.meta_iteration`) of the
  paper's Omniglot (5 tasks x 5 Adam steps of batch 10, 10 shots) and Mini-ImageNet (5
  tasks x 8 steps of batch 10, 15 shots) settings, in meta-iterations/s.

The data are synthetic glyphs of the real data sets' shapes (28x28x1 and 84x84x3), so
each step computes what it computes on Omniglot or Mini-ImageNet. The serial and the
1-worker numbers give the scheduling overhead; every result is also checked to be the
serial one, bit for bit. On a busy machine those rates move by tens of per cent from one
run to the next, so the scheduler's own cost is also timed alone: chunks of one no-op
item each, in ms per chunk. Prints a Markdown table.
"""
import argparse
import time

import numpy as np

from reptile_np import dist, evaluate, models, threads, train
from reptile_np.data.synthetic import load_synthetic
from reptile_np.workers import InProcess

SETTINGS = {
    "Omniglot": dict(model="omniglot", size=28, channels=1,
                     config=dict(num_classes=5, train_shots=10, num_shots=5, inner_batch_size=10,
                                 inner_iters=5, meta_batch_size=5, meta_step_size=1.0)),
    "Mini-ImageNet": dict(model="miniimagenet", size=84, channels=3,
                          config=dict(num_classes=5, train_shots=15, num_shots=5,
                                      inner_batch_size=10, inner_iters=8, meta_batch_size=5,
                                      meta_step_size=1.0)),
}


def problem(name, meta_iters):
    setting = SETTINGS[name]
    splits = load_synthetic(20, 20, 20, size=setting["size"], seed=0,
                            channels=setting["channels"])
    config = train.TrainConfig(**setting["config"], meta_iters=meta_iters, parallel_tasks=True)
    model = models.MODELS[setting["model"]](config.num_classes)
    return splits, config, model


def time_evaluation(executor, tasks):
    splits, config, model = problem("Omniglot", 1)
    theta = model.init(np.random.default_rng(0), np.float32)
    optimizer = train.make_optimizer(config, model.num_params, np.float32)
    start, start_cpu = time.perf_counter(), time.process_time()
    _, _, accuracies = evaluate.evaluate(model, theta, optimizer, splits["test"], 5, 5, 5, 50,
                                         tasks, np.random.default_rng(1), workers=executor)
    elapsed = time.perf_counter() - start
    CLIENT_CPU[executor] = (time.process_time() - start_cpu) / elapsed
    return tasks / elapsed, accuracies


CLIENT_CPU = {}
"""This process's CPU time per second of wall time, in the last evaluation on each executor:
with a ``local:N`` cluster, its scheduler, nannies and client all run here."""


def time_meta_batch(executor, name, meta_iters):
    splits, config, model = problem(name, meta_iters)
    theta = model.init(np.random.default_rng(0), np.float32)
    optimizer = train.make_optimizer(config, model.num_params, np.float32)
    start = time.perf_counter()
    for iteration in range(meta_iters):
        theta, _ = train.meta_iteration(model, theta, optimizer, splits["train"], config,
                                        iteration, executor)
    return meta_iters / (time.perf_counter() - start), theta


def no_op(context, item):
    return item


def chunk_cost(executor, chunks=200):
    """Milliseconds per chunk of one no-op item: what the cluster adds to every chunk."""
    one_per_chunk = dist.DaskExecutor(executor.client, chunk_size=1)
    start = time.perf_counter()
    assert list(one_per_chunk.map(no_op, range(chunks), None)) == list(range(chunks))
    return 1000 * (time.perf_counter() - start) / chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="evaluation tasks")
    parser.add_argument("--meta-iters", type=int, default=10, help="meta-iterations per setting")
    args = parser.parse_args()
    threads.set_threads(1)
    measurements = [("Omniglot evaluation, tasks/s", lambda ex: time_evaluation(ex, args.tasks))]
    measurements += [(f"{name} --parallel-tasks meta-iteration, meta-it/s",
                      lambda ex, name=name: time_meta_batch(ex, name, args.meta_iters))
                     for name in SETTINGS]
    # Warm-up: Numba's kernels compiled (or loaded from its cache) in this process.
    time_meta_batch(None, "Omniglot", 1)
    columns = {"serial": InProcess()}
    rows = {label: [measure(columns["serial"])] for label, measure in measurements}
    costs, client_cpu = [], []
    for workers in (1, 2):
        with dist.connect(f"local:{workers}") as executor:
            costs.append(chunk_cost(executor))
            for label, measure in measurements:
                measure(executor)  # each worker's Numba kernels compiled or loaded
                rows[label].append(measure(executor))
            client_cpu.append(CLIENT_CPU[executor])
    print("| work | serial | 1 worker | 2 workers | 1-worker overhead | 2-worker speed-up |")
    print("|---|---|---|---|---|---|")
    for label, results in rows.items():
        rates = [rate for rate, _ in results]
        for _, result in results[1:]:
            assert np.array_equal(result, results[0][1]), f"{label}: not the serial result"
        print(f"| {label} | {rates[0]:.2f} | {rates[1]:.2f} | {rates[2]:.2f} | "
              f"{100 * (rates[0] / rates[1] - 1):+.1f}% | {rates[2] / rates[0]:.2f}x |")
    print(f"| scheduler cost per chunk (no-op item), ms | | {costs[0]:.1f} | {costs[1]:.1f} | | |")
    print(f"| this process's CPU during the evaluation, % of a core | | "
          f"{100 * client_cpu[0]:.0f} | {100 * client_cpu[1]:.0f} | | |")


if __name__ == "__main__":
    main()
