"""One measurement in a fresh process; `run.py` starts these and reads their JSON lines.

Each framework runs in its own process, so thread settings (environment variables set
by `run.py` before the process starts) take effect before any library is imported,
and no framework's idle thread pool competes with another's.

    python bench/worker.py time --framework numba --workload omniglot --threads 2
    python bench/worker.py ceiling --threads 2
    python bench/worker.py first-iteration --framework numba --workload omniglot
    python bench/worker.py train --framework numba --workload omniglot --iterations 20

Records are printed one per line, prefixed with ``@@bench `` (other output is ignored).
"""
import time

STARTED = time.perf_counter()   # before the heavy imports: import time counts from here

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))   # benchmark the working tree's reptile_np

import numpy as np

import workloads

FRAMEWORKS = ("numba", "numpy", "torch", "torch-tuned", "jax")
INSTALL = {"torch": "pip install torch   (the 'torch' extra: pip install -e '.[torch]')",
           "jax": "pip install jax jaxlib   (the 'jax' extra: pip install -e '.[jax]')"}
PARITY_LOSS_RTOL, PARITY_GRAD_RTOL = 1e-4, 1e-3
# The first unit's update, |delta - delta_ours| / |delta_ours| (2-norms), by inner optimiser.
# SGD workloads agree to rounding (~1e-5 measured). Adam with beta1 = 0 divides each entry's
# gradient by its own running root mean square, so an entry whose gradient is within rounding
# of 0 (or whose max-pool winner is a near-tie) steps +-lr with a sign set by rounding; correct
# implementations were measured 0.000003 to 0.095 apart after one Omniglot or Mini-ImageNet
# meta-iteration (25 and 40 Adam steps), a twin drawing other batches about 1.
PARITY_UPDATE_RTOL = {"sgd": 1e-4, "adam": 0.2}
# Variables that force OpenBLAS onto a kernel and cache size other than the ones it picks for
# this CPU (this environment sets OPENBLAS_CORETYPE=Haswell on an AVX-512 machine); run.py
# unsets them for its workers unless --keep-blas-env, so the bench measures what users get.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def emit(record):
    print("@@bench " + json.dumps(record), flush=True)


def module_for(framework):
    """The module that must import for a framework to run ("torch", "jax" or "reptile_np")."""
    return {"torch": "torch", "torch-tuned": "torch", "jax": "jax"}.get(framework, "reptile_np")


def make_runner(framework, workload, data, state_dict, seed):
    """A runner with ``unit()``, ``loss_and_grad(x, y)``, ``backend``, ``compile_s``."""
    if framework in ("numba", "numpy"):
        import ours
        return ours.Runner(workload, data, state_dict, framework, seed)
    if framework in ("torch", "torch-tuned"):
        import torch_twin
        return torch_twin.Runner(workload, data, state_dict,
                                 "tuned" if framework == "torch-tuned" else "default", seed)
    import jax_twin
    return jax_twin.Runner(workload, data, state_dict, seed)


def import_framework(framework, threads, adaptive=False):
    """Import the framework and set its thread count; return its version string.

    Raises ImportError when it is not installed.
    """
    if framework in ("torch", "torch-tuned"):
        import torch
        torch.set_num_threads(threads)
        return torch.__version__
    if framework == "jax":
        import jax
        jax.config.update("jax_platforms", "cpu")
        return jax.__version__
    from reptile_np import kernels   # imports the Numba kernels if it can
    # As `reptile-np --threads` does: the Numba kernels on ``threads`` threads of their own
    # with OpenBLAS on one thread inside each piece; the NumPy kernels give them to OpenBLAS.
    # With --adaptive (reptile-np --threads auto) at most that many, fewer beside busy
    # processes: the runner adapts before every unit, as a training does per meta-iteration.
    kernels.set_threads(threads, adaptive=adaptive)
    if framework == "numba":
        try:
            import numba
            return numba.__version__
        except ImportError:
            return None
    return np.__version__


def first_batch(workload, data, seed):
    """The first mini-batch of the first task, for the parity check."""
    from reptile_np.meta import minibatches
    x, y = data["tasks"][0]
    index = minibatches(len(y), workload.inner_batch, 1, np.random.default_rng(seed + 1))[0]
    return x[index], y[index]


def reference(workload, data, state_dict, seed):
    """Our NumPy backend's first-batch loss and gradient at the initial weights, and for a
    meta-iteration workload also theta before and after the first unit.

    Runs before the measured runner is built: that runner sets the kernel backend it uses.
    """
    import ours
    ref = ours.Runner(workload, data, state_dict, "numpy", seed)
    loss, grad = ref.loss_and_grad(*first_batch(workload, data, seed))
    result = {"loss": loss, "grad": grad}
    if workload.unit == "meta-iteration":
        result["theta_before"] = ref.flat_theta()
        ref.unit()
        result["theta_after"] = ref.flat_theta()
    return result


def relative_error(value, ref):
    """``max |value - ref| / max |ref|``, over whole vectors."""
    return float(np.max(np.abs(value - ref)) / max(np.max(np.abs(ref)), 1e-30))


def first_step_parity(runner, ref, workload, data, seed):
    """The runner's first-batch loss and gradient against our NumPy reference."""
    loss, grad = runner.loss_and_grad(*first_batch(workload, data, seed))
    loss_rel = abs(loss - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
    grad_rel = relative_error(grad, ref["grad"])
    return {"loss": loss, "loss_ours": ref["loss"], "loss_rel_err": loss_rel,
            "grad_max_rel_err": grad_rel,
            "ok": bool(loss_rel <= PARITY_LOSS_RTOL and grad_rel <= PARITY_GRAD_RTOL)}


def smooth_entries(workload):
    """Mask of theta's entries outside the conv biases that precede BatchNorm.

    Those biases have an exact gradient of zero; in float32 it is rounding noise, which
    Adam divides by the root of its own tiny second moment, so each framework moves them
    by its own noise (paper notes section 1.2). The update of every other entry is
    determined by the shared weights and batches.
    """
    from reptile_np.gradcheck import zero_gradient_tensors
    model = workloads.build_model(workload)
    zero = set(zero_gradient_tensors(model))
    mask = np.ones(model.num_params, dtype=bool)
    for name, start, stop in zip(model.layout.names, model.layout.offsets[:-1],
                                 model.layout.offsets[1:]):
        mask[start:stop] = name not in zero
    return mask


def unit_parity(theta_after, ref, workload):
    """Theta after the runner's first unit against ours, compared as the update it made:
    ``|delta - delta_ours| / |delta_ours|`` (2-norms) with delta = theta after - theta
    before, over `smooth_entries`; ok within ``PARITY_UPDATE_RTOL[workload.optimizer]``."""
    mask = smooth_entries(workload)
    update = (theta_after - ref["theta_before"])[mask]
    update_ours = (ref["theta_after"] - ref["theta_before"])[mask]
    error = float(np.linalg.norm(update - update_ours) / max(np.linalg.norm(update_ours), 1e-30))
    return {"update_rel_err": error, "ok": bool(error <= PARITY_UPDATE_RTOL[workload.optimizer])}


def measure(unit, warmup_s, repeats, min_repeat_s, budget_s, min_repeats, after_first=None):
    """Burn-in, then timed repeats, nanoGPT style.

    The burn-in is the first call (which includes any JIT compilation) plus more calls
    until ``warmup_s`` has passed. Each timed repeat runs enough units to last about
    ``min_repeat_s``; the number of repeats is cut to fit ``budget_s`` but never below
    ``min_repeats``.

    Args:
        after_first: called (untimed) right after the first unit; its value is returned.

    Returns:
        dict with first_call_s, burn_in_s, burn_in_units, units_per_repeat,
        samples (seconds per unit, one per repeat) and after_first.
    """
    start = time.perf_counter()
    unit()
    first = time.perf_counter() - start
    after = after_first() if after_first else None
    last, count = first, 1
    while time.perf_counter() - start < warmup_s and count < 100:
        t = time.perf_counter()
        unit()
        last, count = time.perf_counter() - t, count + 1
    burn_in = time.perf_counter() - start
    per_repeat = max(1, math.ceil(min_repeat_s / last))
    repeats = max(min_repeats, min(repeats, int(budget_s // (last * per_repeat))))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(per_repeat):
            unit()
        samples.append((time.perf_counter() - t) / per_repeat)
    return {"first_call_s": first, "burn_in_s": burn_in, "burn_in_units": count,
            "units_per_repeat": per_repeat, "samples": samples, "after_first": after}


def summary(samples):
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median": float(median), "min": float(min(samples)), "max": float(max(samples)),
            "q1": float(q1), "q3": float(q3)}


def blas_info():
    """BLAS libraries, their kernels and thread counts, via threadpoolctl when installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                      "prefix", "filepath")}
            for pool in threadpool_info()]


def openblas_kernel(pools):
    """The OpenBLAS builds this process loaded and the kernel ("architecture") each chose,
    with the folder it came from, e.g. "OpenBLAS 0.3.31 SkylakeX (numpy.libs)" (Numba's
    compiled np.dot calls SciPy's, so a Numba process can hold two); unknown without
    threadpoolctl (``pools`` None), but for NumPy's own OpenBLAS, which
    `reptile_np.threads.blas_info` reads without it."""
    if pools is None:
        from reptile_np.threads import blas_info as numpy_blas_info
        numpy_blas = numpy_blas_info()
        if numpy_blas["library"] is None:
            return "unknown (threadpoolctl not installed)"
        return (f"OpenBLAS {numpy_blas['kernel']} ({Path(numpy_blas['library']).parent.name}; "
                "threadpoolctl not installed: others unknown)")
    found = sorted(f"OpenBLAS {p['version']} {p['architecture']} "
                   f"({Path(p['filepath']).parent.name})"
                   for p in pools if p["internal_api"] == "openblas")
    return ", ".join(found) or "none loaded"


def torch_kernels():
    """The libraries PyTorch computes with, from its build configuration: on x86 MKL for
    matrix products and oneDNN for convolutions, both linked into torch itself, so
    threadpoolctl does not see them (the OpenBLAS it lists serves NumPy)."""
    import torch
    config = torch.__config__.show()
    found = [f"BLAS {m.group(1)}" for m in [re.search(r"BLAS_INFO=(\w+)", config)] if m]
    found += [f"MKL {m.group(1)}" for m in [re.search(r"Math Kernel Library Version (\S+)",
                                                      config)] if m]
    found += [f"oneDNN v{m.group(1)}" for m in [re.search(r"MKL-DNN v(\S+)", config)] if m]
    found.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    return "torch's own: " + ", ".join(found)


def process_record(framework):
    """What every measurement record says about the process that made it: its OpenBLAS
    variables as it saw them (None = unset), its BLAS pools, and the kernels that ran the
    products: the OpenBLAS kernel and, for PyTorch and JAX, the kernels of their own that
    their layers use instead (None for ours, which calls NumPy's OpenBLAS)."""
    pools = blas_info()
    own = None
    if framework in ("torch", "torch-tuned"):
        own = torch_kernels()
    elif framework == "jax":
        own = "XLA's own compiled CPU kernels"
    return {"blas_env": {name: os.environ.get(name) for name in BLAS_ENV}, "blas": pools,
            "kernel": {"openblas": openblas_kernel(pools), "framework": own}}


def cmd_time(args):
    workload = workloads.WORKLOADS[args.workload]
    data = workloads.make_data(workload, args.seed)
    state_dict = workloads.initial_state_dict(workload, args.seed)
    ref = reference(workload, data, state_dict, args.seed) if args.framework != "numpy" else None
    runner = make_runner(args.framework, workload, data, state_dict, args.seed)
    check = first_step_parity(runner, ref, workload, data, args.seed) if ref else None
    quick = args.quick
    m = measure(runner.unit, warmup_s=0.3 if quick else 2.0,
                repeats=args.repeats or (3 if quick else 7),
                min_repeat_s=0.1 if quick else 0.5,
                budget_s=args.budget or (3.0 if quick else 40.0),
                min_repeats=2 if quick else 3, after_first=runner.flat_theta)
    samples, theta_after = m.pop("samples"), m.pop("after_first")
    if check and "theta_after" in ref:
        unit_check = unit_parity(theta_after, ref, workload)
        check.update(update_rel_err=unit_check["update_rel_err"],
                     ok=check["ok"] and unit_check["ok"])
    stats = summary(samples)
    flops = workloads.flops_per_unit(workload)
    emit({"kind": "result", "workload": workload.name, "framework": args.framework,
          "backend": runner.backend, "unit": workload.unit, "dtype": "float32",
          "threads": args.threads, "inner_steps_per_unit": workload.inner_steps,
          "repeats": len(samples), **m, "s_per_unit": stats, "samples_s": samples,
          "units_per_s": 1.0 / stats["median"],
          "ms_per_inner_step": 1e3 * stats["median"] / workload.inner_steps,
          "flops_per_unit": flops, "gflop_s": flops / stats["median"] / 1e9,
          "compile_s": runner.compile_s, "parity": check, "info": runner.describe(),
          **process_record(args.framework), "version": args.version})


def time_sgemm(a, b, min_s=0.2, repeats=5):
    """Median seconds of ``a @ b`` over ``repeats`` samples of at least ``min_s`` each."""
    for _ in range(3):
        np.dot(a, b)
    t = time.perf_counter()
    np.dot(a, b)
    per_sample = max(1, math.ceil(min_s / max(time.perf_counter() - t, 1e-9)))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(per_sample):
            np.dot(a, b)
        samples.append((time.perf_counter() - t) / per_sample)
    return float(np.median(samples))


def cmd_ceiling(args):
    """The machine's sgemm rate: a 1024^3 float32 np.dot (the ceiling), and the forward
    im2col matmul shapes of the two CNNs at batch 10 (for reference)."""
    rng = np.random.default_rng(0)
    n = 1024
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    seconds = time_sgemm(a, b, min_s=0.1 if args.quick else 0.3)
    record = {"kind": "ceiling", "threads": args.threads,
              "sgemm_1024_gflop_s": 2 * n ** 3 / seconds / 1e9,
              **process_record("numpy")}
    for name in ("omniglot", "miniimagenet"):
        shapes = workloads.im2col_shapes(workloads.WORKLOADS[name], 10)
        total_s, total_flops = 0.0, 0
        for m_, k_, n_ in shapes:
            x, w = rng.random((m_, k_), dtype=np.float32), rng.random((k_, n_), dtype=np.float32)
            total_s += time_sgemm(x, w, min_s=0.02 if args.quick else 0.05, repeats=3)
            total_flops += 2 * m_ * k_ * n_
        record[f"sgemm_im2col_{name}_gflop_s"] = total_flops / total_s / 1e9
        record[f"sgemm_im2col_{name}_shapes"] = shapes
    emit(record)


def rss_mb(field):
    """VmRSS or VmHWM (peak) of this process in MB, from /proc/self/status."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def cmd_first_iteration(args):
    """Import, build, one unit: what a user's first meta-iteration costs from the command."""
    workload = workloads.WORKLOADS[args.workload]
    imported = time.perf_counter()
    data = workloads.make_data(workload, args.seed)
    runner = make_runner(args.framework, workload, data,
                         workloads.initial_state_dict(workload, args.seed), args.seed)
    t = time.perf_counter()
    runner.unit()
    done_wall, done = time.time(), time.perf_counter()
    runner.unit()
    second = time.perf_counter() - done
    emit({"kind": "startup", "framework": args.framework, "workload": workload.name,
          "backend": runner.backend, "import_s": imported - STARTED,
          "build_s": t - imported, "first_unit_s": done - t, "second_unit_s": second,
          "compile_s": runner.compile_s, "first_unit_done_wall": done_wall,
          "in_process_to_first_unit_s": done - STARTED, "version": args.version})


def cmd_train(args):
    """A training process for the memory probe: ``--iterations`` units of the workload."""
    workload = workloads.WORKLOADS[args.workload]
    after_import = rss_mb("VmRSS")
    data = workloads.make_data(workload, args.seed)
    runner = make_runner(args.framework, workload, data,
                         workloads.initial_state_dict(workload, args.seed), args.seed)
    for _ in range(args.iterations):
        runner.unit()
    emit({"kind": "memory", "framework": args.framework, "workload": workload.name,
          "backend": runner.backend, "iterations": args.iterations,
          "rss_after_import_mb": after_import, "rss_end_mb": rss_mb("VmRSS"),
          "vm_hwm_mb": rss_mb("VmHWM"), "version": args.version})


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("time", "ceiling", "first-iteration", "train"))
    parser.add_argument("--framework", choices=FRAMEWORKS, default="numpy")
    parser.add_argument("--workload", choices=workloads.TIMED, default="omniglot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adaptive", action="store_true",
                        help="ours: set_threads(--threads, adaptive=True)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (0: 3 quick, 7 full)")
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds for the timed stage (0: 3 quick, 40 full)")
    parser.add_argument("--iterations", type=int, default=20, help="units of the train command")
    # Every framework gets the allocator setting `reptile-np` itself uses (page faults on
    # freed temporaries otherwise dominate small steps), so the comparison stays fair;
    # BENCH_GLIBC_DEFAULTS=1 measures every framework as installed instead.
    if os.environ.get("BENCH_GLIBC_DEFAULTS") != "1":
        from reptile_np.runtime import keep_freed_memory
        keep_freed_memory()
    args = parser.parse_args()
    if args.framework not in ("numba", "numpy"):
        # The parity reference and the data helpers use our NumPy kernels; keep Numba
        # (and its threads) out of the PyTorch and JAX processes.
        os.environ["REPTILE_NP_BACKEND"] = "numpy"
    if args.command != "ceiling":
        try:
            args.version = import_framework(args.framework, args.threads, args.adaptive)
        except ImportError as error:
            module = module_for(args.framework)
            emit({"kind": "missing", "framework": args.framework, "module": module,
                  "error": str(error), "install": INSTALL.get(module, "pip install -e .")})
            return
    {"time": cmd_time, "ceiling": cmd_ceiling, "first-iteration": cmd_first_iteration,
     "train": cmd_train}[args.command](args)


if __name__ == "__main__":
    main()
