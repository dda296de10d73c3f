"""Where one inner step goes: ms/step of ``model.loss_and_grad`` and a per-layer breakdown.

    python bench/kernels_profile.py                   # Omniglot, batch 10, 1 and 2 threads
    python bench/kernels_profile.py --model miniimagenet --batch 5 --threads 2
    python bench/kernels_profile.py --backend numpy numba --repeats 50

Each configuration runs a warm-up step first (Numba compiles or loads its cache
there; that time is printed as "first step"), then ``--repeats`` timed steps.
Threads are set with `reptile_np.kernels.set_threads`, as the library runs them
(the Numba kernels get the threads and call OpenBLAS single-threaded; the NumPy
backend gives them to OpenBLAS). The per-layer table re-runs the same step layer by
layer and keeps each layer's fastest forward and backward time. Page faults per
step are printed because fresh memory is slow: with glibc's default heap trimming a
step faults in its temporaries again every time. Like ``reptile-np`` and the bench's
workers, this script first calls `reptile_np.runtime.keep_freed_memory`;
``--glibc-defaults`` leaves glibc as it is, to see the difference.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reptile_np import kernels, losses, models, runtime  # noqa: E402

SHAPES = {"omniglot": (1, 28, 28), "miniimagenet": (3, 84, 84)}


def page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(model, theta, x, y, repeats):
    """(first step in s, per-step times in ms, page faults per step)."""
    start = time.perf_counter()
    model.loss_and_grad(theta, x, y)
    first = time.perf_counter() - start
    for _ in range(3):
        model.loss_and_grad(theta, x, y)
    times, faults = [], page_faults()
    for _ in range(repeats):
        start = time.perf_counter()
        model.loss_and_grad(theta, x, y)
        times.append(1e3 * (time.perf_counter() - start))
    return first, np.array(times), (page_faults() - faults) / repeats


def layer_times(model, theta, x, y, repeats):
    """Fastest forward and backward time of every layer (µs), over ``repeats`` steps."""
    params = model.layer_params(theta)
    forward = np.full(len(model.layers), np.inf)
    backward = np.full(len(model.layers), np.inf)
    for _ in range(repeats):
        out, caches = x, []
        for k, (layer, p) in enumerate(zip(model.layers, params)):
            start = time.perf_counter()
            out, cache = layer.forward(p, out)
            forward[k] = min(forward[k], 1e6 * (time.perf_counter() - start))
            caches.append(cache)
        _, dout = losses.softmax_cross_entropy(out, y, "sum")
        for k in reversed(range(len(model.layers))):
            start = time.perf_counter()
            dout, _ = model.layers[k].backward(params[k], caches[k], dout, input_grad=k > 0)
            backward[k] = min(backward[k], 1e6 * (time.perf_counter() - start))
    return forward, backward


def profile(model_name, batch, backend, threads, repeats):
    kernels.set_backend(backend)
    kernels.set_threads(threads)
    model = models.MODELS[model_name](5)
    rng = np.random.default_rng(0)
    theta = model.init(rng, np.float32)
    x = rng.standard_normal((batch,) + SHAPES[model_name]).astype(np.float32)
    y = rng.integers(0, 5, batch)
    first, times, faults = time_steps(model, theta, x, y, repeats)
    forward, backward = layer_times(model, theta, x, y, repeats)
    print(f"\n{model_name}, batch {batch}, backend {kernels.get_backend()}, {threads} thread(s): "
          f"{times.min():.2f} ms/step min, {np.median(times):.2f} median over {repeats} steps; "
          f"first step {first:.2f} s; {faults:.0f} page faults/step")
    print(f"  {'layer':58s} {'forward':>9s} {'backward':>9s}   (µs, fastest)")
    for k, layer in enumerate(model.layers):
        print(f"  {k:2d} {layer!r:55s} {forward[k]:9.0f} {backward[k]:9.0f}")
    print(f"  {'sum':58s} {forward.sum():9.0f} {backward.sum():9.0f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="omniglot")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--backend", nargs="+", choices=kernels.BACKENDS, default=["numba"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="do not call runtime.keep_freed_memory (as reptile-np does)")
    args = parser.parse_args(argv)
    kept = not args.glibc_defaults and runtime.keep_freed_memory()
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"glibc keeps freed memory: {'yes' if kept else 'no'}")
    for backend in args.backend:
        for threads in args.threads:
            profile(args.model, args.batch, backend, threads, args.repeats)


if __name__ == "__main__":
    main()
