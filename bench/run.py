"""Benchmark reptile-np against PyTorch and JAX on this CPU: one command, one run.

    python bench/run.py                                   # everything, 1 thread and all CPUs
    python bench/run.py --threads 1,2 --out-dir bench/out # + results.jsonl, results.md
    python bench/run.py --threads 1,2 --busy --rounds 3   # + beside a competing process
    python bench/run.py --quick --workloads sine --frameworks numba,numpy --threads 1

Workloads (see workloads.py): omniglot and miniimagenet meta-iterations (5 tasks of
Adam steps), sine (serial Reptile, 5 SGD steps), eval (an Omniglot 1-shot evaluation
task: 50 Adam steps, then a prediction), startup (command to first meta-iteration,
cold and warm Numba cache) and memory (peak RSS of an Omniglot training process).

Frameworks: numba and numpy (our kernel backends, `reptile_np.kernels.set_backend`),
torch (eager, defaults), torch-tuned (channels_last + fused optimiser) and jax (the whole
meta-iteration jitted). Missing ones are skipped with one line saying what to install.

Every (workload, framework, thread count) runs in its own process (bench/worker.py) with
the thread count set through the environment before anything is imported; the timed
stage follows a separate burn-in. The workers run without OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE (unless --keep-blas-env), so OpenBLAS picks the kernel it picks on a
user's machine; each records the kernel it ran. The report ends with the speed targets
of the project, each judged met or not met on this run's figures. Nothing here changes
the library's numerics, and this process's own environment stays as it is.
"""
import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import workloads  # noqa: E402  (numpy only; the frameworks load in the workers)
from worker import (BLAS_ENV, FRAMEWORKS, INSTALL, PARITY_GRAD_RTOL,  # noqa: E402
                    PARITY_LOSS_RTOL, PARITY_UPDATE_RTOL, module_for)

OURS = ("numba", "numpy")                           # the backends compared ...
THEIRS = ("torch", "torch-tuned", "jax", "numpy")   # ... with these (numba with numpy too)
LABELS = {"numba": "numba", "numpy": "numpy", "torch": "torch-default",
          "torch-tuned": "torch-tuned", "jax": "jax-jit"}
TITLES = {
    "omniglot": "Omniglot 5-way meta-iteration: 5 tasks x 5 Adam steps, batch 10, "
                "x (10, 1, 28, 28), float32",
    "miniimagenet": "Mini-ImageNet 5-way meta-iteration: 5 tasks x 8 Adam steps, batch 10, "
                    "x (10, 3, 84, 84), float32",
    "sine": "Sine, serial Reptile: 1 task x 5 SGD steps of 10 points, MLP 1-64-64-1 tanh, "
            "mean MSE, lr 0.02",
    "eval": "Omniglot 5-way 1-shot evaluation task: 50 Adam steps on batches of 5, then "
            "predict 5 queries",
}
UNIT_SHORT = {"meta-iteration": ("meta-it/s", "ms/meta-it"), "evaluation task": ("tasks/s", "ms/task")}
BUSY = 0.25     # mean CPUs used by other processes above which a cell is flagged
# The competing process of --busy: a pure-Python busy loop. It keeps one core fully busy
# with one thread, and touches neither BLAS nor much memory, so it takes CPU time only.
COMPETITOR = "while True: pass"


# ---------------------------------------------------------------------------- processes

def worker_env(threads, keep_blas_env=False, environ=None):
    """The environment of a worker: the caller's (``environ``, default ``os.environ``)
    with thread counts pinned before any import, and (unless ``keep_blas_env``) without
    the OpenBLAS kernel variables `worker.BLAS_ENV`, so that OpenBLAS picks this CPU's
    kernel as on a user's machine.

    A modified copy: the caller's environment, this process's own, is left as it is.
    """
    env = dict(os.environ if environ is None else environ)
    if not keep_blas_env:
        for name in BLAS_ENV:
            env.pop(name, None)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    env["JAX_PLATFORMS"] = "cpu"
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    return env


def cpu_busy_seconds():
    """Busy CPU-seconds of the whole machine since boot, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def spawn(args, env, cpus=None):
    """Run ``worker.py ARGS`` and return (records, info).

    info: returncode, wall_s, start_wall, peak_rss_mb (``ru_maxrss`` of this child alone,
    via wait4), other_cpu (mean CPUs used by other processes meanwhile) and stderr_tail.
    """
    with tempfile.TemporaryFile() as err:
        busy0, start_wall = cpu_busy_seconds(), time.time()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "worker.py"), *args],
                                stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        out = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        busy1 = cpu_busy_seconds()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    other = None
    if busy0 is not None and wall > 0:
        other = max(0.0, (busy1 - busy0 - usage.ru_utime - usage.ru_stime) / wall)
    records = [json.loads(line[len("@@bench "):]) for line in out.splitlines()
               if line.startswith("@@bench ")]
    return records, {"returncode": proc.returncode, "wall_s": wall, "start_wall": start_wall,
                     "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6, "other_cpu": other,
                     "stderr_tail": "\n".join(stderr.strip().splitlines()[-8:])}


@contextlib.contextmanager
def competing_process():
    """One CPU-bound process (`COMPETITOR`) running beside whatever the block starts.

    Yields a dict with its command and pid; on exit the process is killed and reaped,
    whatever happened in the block, and the dict gets the CPU-seconds it used.
    """
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = {"command": f"python -c {COMPETITOR!r}", "pid": proc.pid}
    try:
        yield info
    finally:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -9    # reaped here: Popen must not wait for it again
        info["cpu_s"] = usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait, window=1.0):
    """Wait up to ``max_wait`` seconds until the machine's other processes use less than
    BUSY CPUs over ``window`` seconds (no worker runs meanwhile); return the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        before = cpu_busy_seconds()
        if before is None:
            break
        time.sleep(window)
        if (cpu_busy_seconds() - before) / window < BUSY:
            break
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- environment

def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args, cpus_available):
    physical = None
    if importlib.util.find_spec("psutil"):
        import psutil
        physical = psutil.cpu_count(logical=False)
    return {
        "kind": "env", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv), "threads": args.threads,
        "quick": args.quick, "busy": args.busy, "seed": args.seed, "dtype": "float32",
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical,
        "cpus_available": len(cpus_available), "loadavg": os.getloadavg(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("numpy", "numba", "torch", "jax", "jaxlib",
                                             "threadpoolctl", "psutil")},
        "git": git_revision(),
        "numba_fast_kernels_file": (ROOT / "reptile_np" / "kernels" / "fast.py").exists(),
        "caller_blas_env": {name: os.environ[name] for name in BLAS_ENV if name in os.environ},
        "keep_blas_env": args.keep_blas_env, "adaptive_threads": args.adaptive_threads,
        "REPTILE_NP_BACKEND": os.environ.get("REPTILE_NP_BACKEND"),
    }


def blas_env_line(env):
    """Which OpenBLAS environment the workers ran with, in one sentence."""
    caller = " ".join(f"{k}={v}" for k, v in env["caller_blas_env"].items())
    if not caller:
        return f"OpenBLAS environment: the caller sets none of {', '.join(BLAS_ENV)}"
    if env["keep_blas_env"]:
        return f"OpenBLAS environment: kept as the caller sets it (--keep-blas-env): {caller}"
    return (f"OpenBLAS environment: the caller sets {caller}; the workers ran with it unset "
            "(what users get; --keep-blas-env keeps it)")


def header_lines(env):
    v = env["versions"]
    cores = f", {env['physical_cores']} physical cores" if env["physical_cores"] else ""
    versions = " | ".join(f"{p} {v[p] or 'not installed'}" for p in ("numpy", "numba", "torch", "jax"))
    lines = [
        f"reptile-np benchmark, {env['date']}, git {env['git']}",
        f"command: {env['command']}",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs{cores}, "
        f"{env['cpus_available']} available) | threads: {','.join(map(str, env['threads']))} "
        f"{'(ours adaptive: at most that many, fewer beside busy processes) ' if env.get('adaptive_threads') else ''}"
        f"| dtype: float32",
        f"python {env['python']} | {versions}",
        f"{blas_env_line(env)} | load average before the run: "
        f"{' '.join(f'{x:.2f}' for x in env['loadavg'])}",
    ]
    if not env["numba_fast_kernels_file"]:
        lines.append("NOTE: reptile_np/kernels/fast.py does not exist: the numba rows fall back "
                     "to the NumPy kernels (see the backend column).")
    return lines


# ---------------------------------------------------------------------------- formatting

def fmt(value, digits=2):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def framework_label(record):
    label = LABELS[record["framework"]]
    if record["framework"] == "numba" and record.get("backend") != "numba":
        label += " (FALLBACK: numpy kernels)"
    return label


def busy_mark(record):
    """' *' when other processes used more than BUSY CPUs during the measurement (beyond
    the one CPU of the competing process, in a run beside one)."""
    expected = 1.0 if record.get("competitor") else 0.0
    return " *" if (record.get("other_cpu") or 0) > expected + BUSY else ""


def threads_text(count):
    """"1 thread", "2 threads"."""
    return f"{count} thread{'s' if count != 1 else ''}"


def condition(record):
    """How a record was measured: its thread count, and "+ competitor" beside one."""
    return threads_text(record["threads"]) + (" + competitor" if record.get("competitor") else "")


def percent_of_ceiling(record, ceilings):
    """The record's conv/linear GFLOP/s as a percentage of the sgemm ceiling measured at
    its thread count (None when that ceiling is missing).

    Args:
        ceilings: ``{threads: ceiling record}``.
    """
    ceiling = ceilings.get(record["threads"])
    return 100 * record["gflop_s"] / ceiling["sgemm_1024_gflop_s"] if ceiling else None


def result_table(records, ceilings):
    """The table of one workload's median rounds, one row per framework and condition."""
    unit_rate, unit_ms = UNIT_SHORT[records[0]["unit"]]
    rows = [f"| framework | threads | backend | {unit_rate} | {unit_ms} median [min-max] "
            f"| ms/inner step | GFLOP/s | % of ceiling | first call (s) | compile (s) "
            f"| peak RSS (MB) | parity |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        s = r["s_per_unit"]
        share = percent_of_ceiling(r, ceilings)
        if r["parity"] is None:
            check = "reference"
        else:
            check = ("ok" if r["parity"]["ok"] else "**FAIL**") + f" ({parity_numbers(r)})"
        rows.append(f"| {framework_label(r)}{busy_mark(r)} | {condition(r)} | {r['backend']} | "
                    f"{fmt(r['units_per_s'])} | "
                    f"{fmt(1e3 * s['median'])} [{fmt(1e3 * s['min'])}-{fmt(1e3 * s['max'])}] | "
                    f"{fmt(r['ms_per_inner_step'], 3)} | {fmt(r['gflop_s'])} | "
                    f"{'-' if share is None else f'{share:.1f}%'} | "
                    f"{fmt(r['first_call_s'])} | {fmt(r['compile_s'])} | {fmt(r['peak_rss_mb'], 0)} | "
                    f"{check} |")
    return rows


def parity_numbers(record):
    """The parity errors of a timing record: loss, and the update of the first unit."""
    p = record["parity"]
    update = f", update {p['update_rel_err']:.0e}" if "update_rel_err" in p else ""
    return f"loss {p['loss_rel_err']:.0e}{update}"


def print_result(r):
    """One console line for a timing record."""
    rate, _ = UNIT_SHORT[r["unit"]]
    check = "-" if r["parity"] is None else ("parity ok" if r["parity"]["ok"] else "PARITY FAIL")
    busy = f"  (other processes: {r['other_cpu']:.1f} CPUs)" if busy_mark(r) else ""
    print(f"  {framework_label(r):<14} {condition(r):<22} {r['units_per_s']:10.2f} "
          f"{rate:<10} {r['ms_per_inner_step']:8.3f} ms/inner step  "
          f"{r['gflop_s']:6.2f} GFLOP/s  first call {r['first_call_s']:.2f} s  {check}{busy}")


# ---------------------------------------------------------------------------- figures

def median_round(runs):
    """The run whose median time is the median of the rounds (the faster middle one of an
    even count)."""
    ordered = sorted(runs, key=lambda r: r["s_per_unit"]["median"])
    return ordered[(len(ordered) - 1) // 2]


def rate_ratio(a, b):
    """Record ``a``'s rate over record ``b``'s: b's median time / a's."""
    return b["s_per_unit"]["median"] / a["s_per_unit"]["median"]


def figure(a_runs, b_runs):
    """``a``'s rate over ``b``'s: ``{"value": of their median rounds, "rounds": [of each
    round both ran, in round order]}``."""
    b_by_round = {r["round"]: r for r in b_runs}
    rounds = [rate_ratio(a, b_by_round[a["round"]])
              for a in sorted(a_runs, key=lambda r: r["round"]) if a["round"] in b_by_round]
    return {"value": rate_ratio(median_round(a_runs), median_round(b_runs)), "rounds": rounds}


def workload_figures(runs):
    """The ratios of one workload, from its ``{(framework, threads, busy): [record of each
    round]}``:

    - ``"speedup"``, ``{(threads, ours, theirs): figure}``: our rate over theirs, quiet,
      for ours in OURS and theirs in THEIRS;
    - ``"scaling"``, ``{(threads, framework): figure}``: the rate at ``threads`` (> 1) over
      the rate at 1 thread, quiet;
    - ``"kept"``, ``{(threads, framework): figure}``: the rate beside a competing process
      over the quiet rate.
    """
    figures = {"speedup": {}, "scaling": {}, "kept": {}}
    for (framework, threads, busy), framework_runs in runs.items():
        quiet = runs.get((framework, threads, False))
        if busy:
            if quiet:
                figures["kept"][(threads, framework)] = figure(framework_runs, quiet)
            continue
        single = runs.get((framework, 1, False))
        if threads > 1 and single:
            figures["scaling"][(threads, framework)] = figure(framework_runs, single)
        if framework in OURS:
            for theirs in THEIRS:
                if theirs != framework and (theirs, threads, False) in runs:
                    figures["speedup"][(threads, framework, theirs)] = figure(
                        framework_runs, runs[(theirs, threads, False)])
    return figures


def ratio_text(fig, percent=False):
    """"1.60x (rounds 1.44, 1.91)", or "55% (rounds ...)" with ``percent``."""
    show = (lambda x: f"{100 * x:.0f}%") if percent else (lambda x: f"{x:.2f}x")
    rounds = fig["rounds"]
    spread = f" (rounds {', '.join(show(x) for x in rounds)})" if len(rounds) > 1 else ""
    return show(fig["value"]) + spread


# ---------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """A speed target of the project, judged on one figure of `workload_figures` at
    TARGET_THREADS threads: ``figures[workload][kind][(TARGET_THREADS, *frameworks)]``
    must reach ``needed`` (exceed it when ``strict``). ``compare``: frameworks whose same
    figure is shown beside ours."""
    label: str
    workload: str
    kind: str
    frameworks: tuple
    needed: float
    strict: bool = False
    compare: tuple = ()

    def needed_text(self):
        value = f"{100 * self.needed:.0f}%" if self.kind == "kept" else f"{self.needed:g}x"
        return ("> " if self.strict else ">= ") + value


TARGET_THREADS = 2
TARGETS = (
    Target("Omniglot meta-iteration: ours / PyTorch tuned", "omniglot", "speedup",
           ("numba", "torch-tuned"), 2.5),
    Target("Omniglot meta-iteration: ours / JAX jit", "omniglot", "speedup", ("numba", "jax"),
           1.5),
    Target("Omniglot meta-iteration: ours, 2 threads / 1 thread", "omniglot", "scaling",
           ("numba",), 1.6, compare=("torch-tuned",)),
    Target("Mini-ImageNet meta-iteration: ours / PyTorch tuned", "miniimagenet", "speedup",
           ("numba", "torch-tuned"), 1.5),
    Target("Mini-ImageNet meta-iteration: ours, 2 threads / 1 thread", "miniimagenet",
           "scaling", ("numba",), 1.7, compare=("torch-tuned",)),
    Target("Omniglot evaluation task: ours / PyTorch tuned", "eval", "speedup",
           ("numba", "torch-tuned"), 3.0),
    Target("Sine loop: ours / PyTorch eager", "sine", "speedup", ("numba", "torch"), 20.0),
    Target("Sine loop: ours / JAX jit (ahead)", "sine", "speedup", ("numba", "jax"), 1.0,
           strict=True),
    Target("Omniglot beside a competing process: ours, kept of quiet speed", "omniglot",
           "kept", ("numba",), 0.4, compare=("torch-tuned", "torch")),
    Target("Mini-ImageNet beside a competing process: ours, kept of quiet speed",
           "miniimagenet", "kept", ("numba",), 0.4, compare=("torch-tuned", "torch")),
)


def judge(target, figures):
    """One target's row: ``{"target", "measured", "needed", "verdict", "compare"}``, the
    verdict "met", "not met" or "not measured" (the run lacked a workload, framework,
    thread count or --busy)."""
    of_kind = figures.get(target.workload, {}).get(target.kind, {})
    fig = of_kind.get((TARGET_THREADS, *target.frameworks))
    percent = target.kind == "kept"
    compare = "; ".join(f"{LABELS[f]} {ratio_text(of_kind[(TARGET_THREADS, f)], percent)}"
                        for f in target.compare if (TARGET_THREADS, f) in of_kind)
    if fig is None:
        return {"target": target.label, "measured": "-", "needed": target.needed_text(),
                "verdict": "not measured", "compare": compare}
    value = fig["value"]
    met = value > target.needed if target.strict else value >= target.needed
    return {"target": target.label, "measured": ratio_text(fig, percent),
            "needed": target.needed_text(), "verdict": "met" if met else "not met",
            "compare": compare}


def target_table(figures):
    """The markdown table of every target judged on ``{workload: workload_figures(...)}``."""
    rows = ["| target | measured (median rounds) | needed | verdict | for comparison |",
            "|---|---|---|---|---|"]
    for target in TARGETS:
        row = judge(target, figures)
        rows.append(f"| {row['target']} | {row['measured']} | {row['needed']} | "
                    f"**{row['verdict']}** | {row['compare'] or '-'} |")
    return rows


def startup_table(records):
    rows = ["| framework | backend | Numba cache | command -> first meta-it done (s) | import (s) "
            "| first meta-it (s) | steady meta-it (s) | compile or cache load (s) | cache files |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        compile_s = r["compile_s"] if r["compile_s"] is not None else \
            max(0.0, r["first_unit_s"] - r["second_unit_s"])
        rows.append(f"| {framework_label(r)}{busy_mark(r)} | {r['backend']} | {r.get('cache', '-')} | "
                    f"{fmt(r['command_to_first_unit_s'])} | {fmt(r['import_s'])} | "
                    f"{fmt(r['first_unit_s'])} | {fmt(r['second_unit_s'])} | {fmt(compile_s)} | "
                    f"{r.get('cache_files', '-')} |")
    return rows


def memory_table(records):
    rows = ["| framework | backend | meta-iterations | peak RSS (MB, ru_maxrss) | RSS after "
            "import (MB) |", "|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {framework_label(r)}{busy_mark(r)} | {r['backend']} | {r['iterations']} | "
                    f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['rss_after_import_mb'], 0)} |")
    return rows


METHOD = """\
How to read this:
- Each (workload, framework, thread count) ran in its own process, thread counts set by
  environment variables before import (and numba.set_num_threads / torch.set_num_threads);
  workers are pinned to as many CPUs as threads when fewer than all. Timed stage after a
  burn-in (first call, which includes JIT compilation, then calls for {warmup}); {repeats}
  repeats of >= {repeat_s}; median and min-max over repeats (IQR in results.jsonl). With
  --rounds N every framework is timed N times in N processes, interleaved: in each round
  every framework at every thread count in turn (and with --busy, each beside a
  competitor right after its quiet run); the tables keep the median round of each
  framework and condition, and every ratio lists its value in each round (every record
  is in results.jsonl).
- ms/inner step = time per unit / optimiser steps per unit (it includes batch drawing
  and the outer interpolation).
- GFLOP/s counts the conv and linear layers only: forward multiply-adds (2 FLOPs each),
  x3 for forward + input gradient + weight gradient (the first layer's unused input
  gradient is counted); BatchNorm, pooling, activations and the optimiser are not.
  % of ceiling = GFLOP/s / the sgemm ceiling at the same thread count: the fraction of
  the GEMM bound (the product flops at the ceiling's rate) achieved.
- sgemm ceiling: median rate of a float32 1024x1024x1024 np.dot, measured in workers with
  the same environment as the timed ones, at each thread count; im2col-shaped np.dot rates
  are those of the CNNs' forward conv matmuls, batch 10.
- Kernels: the OpenBLAS kernel is threadpoolctl's "architecture" of the OpenBLAS loaded in
  each worker ("unknown" without threadpoolctl). PyTorch computes with libraries linked
  into torch itself (on x86: MKL for matrix products, oneDNN for convolutions), named from
  its build configuration; the OpenBLAS in its worker serves NumPy (data, parity
  reference). JAX runs XLA's own compiled kernels.
- 2 threads / 1 thread: the rate at 2 threads over the rate at 1 thread, of the median
  rounds (and of each round). Beside a competitor (--busy): the rate while one other
  process, {competitor}, keeps one core busy, over the quiet rate; the
  competitor is not pinned (the scheduler places it).
- parity, against our NumPy backend, float32, the same weights and batches: the first
  inner step's loss and gradient (rel. err of the loss, max |g - g_ours| / max |g_ours|),
  and for meta-iterations the update of the first timed unit, delta = theta after -
  theta before, as |delta - delta_ours| / |delta_ours| (2-norms) over every entry but the
  conv biases before BatchNorm (their gradient is rounding noise that Adam amplifies, so
  each framework moves them by its own noise: paper notes section 1.2). ok = loss
  <= {loss_rtol}, gradient <= {grad_rtol}, update <= {update_rtol}. Adam's tolerance is
  wide because with beta1 = 0 it steps +-lr on entries whose gradient sign is rounding.
- torch-default: torch.optim.Adam(betas=(0, 0.999)), NCHW. torch-tuned: channels_last,
  fused=True. PyTorch's Adam adds eps after the bias correction; ours and the JAX twin's
  are TF1's form; the cost is the same. jax-jit: compile time reported apart.
- Targets: the project's speed targets at {target_threads} threads, each judged on the
  ratio of this run's median rounds ("not measured" when the run lacks what it needs).
- Start-up: wall time from starting `python bench/worker.py first-iteration` to the end of
  the first meta-iteration; cold = fresh NUMBA_CACHE_DIR, warm = the same directory again.
  "compile or cache load" = first minus second meta-iteration (JAX: lower + compile).
- Memory: ru_maxrss of a child process (read with wait4) that runs Omniglot meta-iterations
  on the fixed synthetic tasks (no dataset in memory).
- Before each measurement the harness waits (up to {quiet_wait} s) for other processes to go
  idle, and measures again (up to {retries} times) when they were busy meanwhile, keeping
  the least disturbed attempt. * marks results during which other processes still used
  more than {busy} CPUs on average (from /proc/stat; beyond the competitor's one CPU in
  a run beside it): their timings are unreliable, multi-threaded runtimes (Numba,
  OpenMP, OpenBLAS) slow down by far more than the share taken."""


# ---------------------------------------------------------------------------- main

def thread_counts(text):
    """``--threads``: "2" or "1,2" as a sorted list of distinct positive ints."""
    try:
        counts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected thread counts >= 1 separated by commas, got {text!r}")
    return counts


def parse_args(cpus_available):
    """The command line, checked, with the defaults that depend on --quick filled in."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=thread_counts,
                        default=thread_counts(f"1,{len(cpus_available)}"),
                        help="comma-separated thread counts, every framework timed at each "
                             "(default: 1 and the CPUs available); with 1 among them the "
                             "report has each rate's scaling over 1 thread")
    parser.add_argument("--quick", action="store_true", help="short burn-in, few repeats")
    parser.add_argument("--workloads", default=",".join(workloads.ALL),
                        help="comma-separated subset of " + ",".join(workloads.ALL))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma-separated subset of " + ",".join(FRAMEWORKS))
    parser.add_argument("--busy", action="store_true",
                        help="also time every framework beside one competing CPU-bound process "
                             "(a pure-Python busy loop) and report the fraction of its quiet "
                             "speed it keeps")
    parser.add_argument("--adaptive-threads", action="store_true",
                        help="our kernels with set_threads(N, adaptive=True), as reptile-np "
                             "--threads auto: at most N threads, fewer while other processes "
                             "keep cores busy (re-measured once a second)")
    parser.add_argument("--keep-blas-env", action="store_true",
                        help="run the workers with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE as "
                             "set here (default: unset them in the workers, so OpenBLAS "
                             "picks this CPU's kernel, as on a user's machine)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write results.jsonl and results.md here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (0: 3 quick, 7 full)")
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds for each timed stage (0: 3 quick, 40 full)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="before each measurement, wait up to this many seconds for other "
                             "processes to go idle (default: 0 quick, 60 full)")
    parser.add_argument("--retries", type=int, default=None,
                        help="measure again when other processes were busy meanwhile, keeping "
                             "the least disturbed attempt (default: 0 quick, 2 full)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every (workload, framework, thread count) this many times, "
                             "in separate processes, interleaved; tables keep each one's "
                             "median round and list the ratio of every round")
    parser.add_argument("--memory-iterations", type=int, default=0,
                        help="meta-iterations of the memory probe (0: 3 quick, 20 full)")
    args = parser.parse_args()
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for flag, names, allowed in (("--workloads", args.workloads, workloads.ALL),
                                 ("--frameworks", args.frameworks, FRAMEWORKS)):
        unknown = sorted(set(names) - set(allowed))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {','.join(allowed)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    return args


class Harness:
    """The state one run shares: settings, the records so far, the frameworks found missing.

    Args:
        args: the parsed command line.
        cpus_available: the CPUs this process may run on.
    """

    def __init__(self, args, cpus_available):
        self.args = args
        self.cpus_available = cpus_available
        self.records = [environment(args, cpus_available)]
        self.missing = set()

    def common(self, threads):
        """The worker arguments every command takes."""
        quick = ["--quick"] if self.args.quick else []
        adaptive = ["--adaptive"] if self.args.adaptive_threads else []
        return ["--threads", str(threads), "--seed", str(self.args.seed), *quick, *adaptive]

    def cpus(self, threads):
        """The CPUs a worker with ``threads`` threads is pinned to (None: all of them)."""
        return set(self.cpus_available[:threads]) if threads < len(self.cpus_available) else None

    def available(self, framework):
        """Whether the framework's module imports here; says so once when it does not."""
        module = module_for(framework)
        if module in self.missing:
            return False
        if module != "reptile_np" and importlib.util.find_spec(module) is None:
            self.note_missing({"framework": framework, "module": module, "error": "not found",
                               "install": INSTALL[module]})
            return False
        return True

    def note_missing(self, record):
        """Record a missing module once, with one line naming what to install."""
        module = record["module"]
        if module in self.missing:
            return
        self.missing.add(module)
        skipped = [f for f in self.args.frameworks if module_for(f) == module]
        print(f"{module} is not installed: skipping {', '.join(skipped)}. "
              f"Install: {record['install']}")
        self.records.append({"kind": "missing", **record, "skipped": skipped})

    def least_disturbed(self, worker_args, label, threads, extra_env, retry, competitor):
        """Run a worker once the machine is quiet (then, with ``competitor``, beside a
        `competing_process`); measure again (up to --retries times) when other processes
        were busy meanwhile. Returns the least disturbed (records, info)."""
        retries = self.args.retries if retry else 0
        env = dict(worker_env(threads, self.args.keep_blas_env), **(extra_env or {}))
        expected = 1.0 if competitor else 0.0     # the competitor's own CPU
        best = None
        for attempt in range(1 + retries):
            waited = wait_for_quiet(self.args.quiet_wait)
            with contextlib.ExitStack() as stack:
                rival = stack.enter_context(competing_process()) if competitor else None
                found, info = spawn(worker_args, env, self.cpus(threads))
            info.update(waited_s=waited, attempt=attempt + 1, competitor=rival)
            busy = max(0.0, (info["other_cpu"] or 0) - expected)
            if best is None or busy < best[2]:
                best = found, info, busy
            if busy <= BUSY or info["returncode"] != 0 or not found:
                break
            if attempt < retries:
                print(f"  ({label}: other processes used {busy:.1f} CPUs meanwhile; "
                      f"measuring again)")
        return best[:2]

    def run_worker(self, worker_args, label, threads, extra_env=None, retry=True,
                   competitor=False):
        """The measurement records of one worker, each with its process's info attached.

        A missing framework is noted; a failed worker is printed and recorded as an error.
        """
        found, info = self.least_disturbed(worker_args, label, threads, extra_env, retry,
                                           competitor)
        absent = [r for r in found if r["kind"] == "missing"]
        for record in absent:
            self.note_missing(record)
        found = [r for r in found if r["kind"] != "missing"]
        if info["returncode"] != 0 or not (found or absent):
            print(f"ERROR in {label} (exit {info['returncode']}):\n{info['stderr_tail']}")
            self.records.append({"kind": "error", "label": label, **info})
        for record in found:
            record.update({k: info[k] for k in ("peak_rss_mb", "other_cpu", "wall_s",
                                                "start_wall", "waited_s", "attempt",
                                                "competitor")})
        return found


def print_preamble(harness, cpus_available):
    """The environment, the optional packages missing, and a warning on a busy machine."""
    env = harness.records[0]
    for line in header_lines(env):
        print(line)
    optional = [p for p in ("threadpoolctl", "psutil") if not importlib.util.find_spec(p)]
    if optional:
        print(f"optional: pip install {' '.join(optional)}  (BLAS kernel and thread, and "
              "physical-core reporting)")
    if env["loadavg"][0] > 0.5 * len(cpus_available):
        print(f"WARNING: the machine is busy (load average {env['loadavg'][0]:.2f} on "
              f"{len(cpus_available)} CPUs); timings will be noisy.")


def ceiling_thread_counts(threads):
    """The thread counts the sgemm ceiling is measured at: 1, 2 and every one timed."""
    return sorted(set(threads) | {1, 2})


def measure_ceilings(harness):
    """The sgemm ceiling record of each thread count, ``{threads: record}`` (a failed
    worker's thread count is left out)."""
    ceilings = {}
    for threads in ceiling_thread_counts(harness.args.threads):
        for record in harness.run_worker(["ceiling", *harness.common(threads)],
                                         f"sgemm ceiling, {threads} threads", threads):
            harness.records.append(record)
            ceilings[threads] = record
            print(f"sgemm ceiling ({record['kernel']['openblas']}, 1024^3 float32 np.dot, "
                  f"{threads_text(threads)}): {record['sgemm_1024_gflop_s']:.1f} GFLOP/s; im2col "
                  f"shapes: Omniglot {record['sgemm_im2col_omniglot_gflop_s']:.1f}, "
                  f"Mini-ImageNet {record['sgemm_im2col_miniimagenet_gflop_s']:.1f} GFLOP/s")
    return ceilings


def time_workload(harness, workload):
    """Every framework on one workload, --rounds times, interleaved: in each round every
    framework at every thread count in turn, each (with --busy) quiet then beside a
    competitor.

    Returns:
        ``{(framework, threads, busy): [record of each round]}``.
    """
    args = harness.args
    extra = ["--repeats", str(args.repeats)] if args.repeats else []
    extra += ["--budget", str(args.budget)] if args.budget else []
    runs = {}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"  round {round_index + 1} of {args.rounds}")
        for framework in args.frameworks:
            if not harness.available(framework):
                continue
            for threads in args.threads:
                for busy in (False, True) if args.busy else (False,):
                    label = f"{workload}/{framework}/{threads} threads" + \
                        (" + competitor" if busy else "")
                    for r in harness.run_worker(["time", "--framework", framework,
                                                 "--workload", workload,
                                                 *harness.common(threads), *extra],
                                                label, threads, competitor=busy):
                        r["round"], r["busy"] = round_index + 1, busy
                        harness.records.append(r)
                        runs.setdefault((framework, threads, busy), []).append(r)
                        print_result(r)
    return runs


def ratio_lines(figures):
    """One line per ratio of a workload's figures, with every round's value."""
    lines = [f"{LABELS[ours]} / {LABELS[theirs]}, {threads_text(threads)} = {ratio_text(fig)}"
             for (threads, ours, theirs), fig in figures["speedup"].items()]
    lines += [f"{LABELS[framework]}, {threads_text(threads)} / 1 thread = {ratio_text(fig)}"
              for (threads, framework), fig in figures["scaling"].items()]
    lines += [f"{LABELS[framework]}, {threads_text(threads)} beside a competitor: kept "
              f"{ratio_text(fig, percent=True)} of its quiet speed"
              for (threads, framework), fig in figures["kept"].items()]
    return lines


def startup_runs(frameworks):
    """(framework, Numba cache state) of each start-up probe: numba cold, then warm."""
    runs = [(f, "cold" if f == "numba" else None) for f in frameworks if f != "torch-tuned"]
    if "numba" in frameworks:
        runs.insert(runs.index(("numba", "cold")) + 1, ("numba", "warm"))
    return runs


def measure_startup(harness):
    """Command -> first Omniglot meta-iteration of each framework, at the largest thread
    count; the start-up records."""
    threads = max(harness.args.threads)
    print(f"\nStart-up: command -> first Omniglot meta-iteration ({threads} threads)")
    startup = []
    cache_dir = tempfile.mkdtemp(prefix="reptile-np-numba-cache-")
    try:
        for framework, cache in startup_runs(harness.args.frameworks):
            if not harness.available(framework):
                continue
            extra_env = {"NUMBA_CACHE_DIR": cache_dir} if framework == "numba" else None
            for r in harness.run_worker(["first-iteration", "--framework", framework,
                                         "--workload", "omniglot", *harness.common(threads)],
                                        f"startup/{framework}", threads, extra_env,
                                        retry=framework != "numba"):  # the cache is warm after one
                r["command_to_first_unit_s"] = r["first_unit_done_wall"] - r["start_wall"]
                if cache:
                    r["cache"] = cache
                    r["cache_files"] = sum(1 for _ in Path(cache_dir).rglob("*.nb[ic]"))
                harness.records.append(r)
                startup.append(r)
                print(f"  {framework_label(r):<14} {cache or '':<5} "
                      f"{r['command_to_first_unit_s']:6.2f} s (import {r['import_s']:.2f} s, "
                      f"first meta-it {r['first_unit_s']:.2f} s, steady "
                      f"{r['second_unit_s']:.2f} s)")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return startup


def measure_memory(harness):
    """Peak RSS of an Omniglot training process of each framework, at the largest thread
    count; the memory records."""
    args = harness.args
    threads = max(args.threads)
    iterations = args.memory_iterations or (3 if args.quick else 20)
    print(f"\nMemory: peak RSS of an Omniglot training process ({iterations} meta-iterations, "
          f"{threads} threads)")
    memory = []
    for framework in args.frameworks:
        if framework == "torch-tuned" or not harness.available(framework):
            continue
        for r in harness.run_worker(["train", "--framework", framework, "--workload", "omniglot",
                                     "--iterations", str(iterations), *harness.common(threads)],
                                    f"memory/{framework}", threads, retry=False):
            harness.records.append(r)
            memory.append(r)
            print(f"  {framework_label(r):<14} {r['peak_rss_mb']:7.0f} MB")
    return memory


def ceiling_lines(ceilings):
    """The sgemm ceiling of each thread count, with the OpenBLAS kernel that reached it."""
    return [f"sgemm ceiling, {threads_text(threads)}: "
            f"{r['sgemm_1024_gflop_s']:.1f} GFLOP/s (float32 1024^3 np.dot, "
            f"{r['kernel']['openblas']}; im2col shapes: Omniglot "
            f"{r['sgemm_im2col_omniglot_gflop_s']:.1f}, Mini-ImageNet "
            f"{r['sgemm_im2col_miniimagenet_gflop_s']:.1f} GFLOP/s)"
            for threads, r in sorted(ceilings.items())]


def kernel_table(records):
    """Which kernels each framework's workers ran, and the OpenBLAS variables they saw."""
    rows = ["| framework | OpenBLAS kernel (threadpoolctl) | the framework's own kernels "
            "| OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE in the worker |", "|---|---|---|---|"]
    seen = {}
    for r in records:
        if "kernel" not in r:
            continue
        name = "sgemm ceiling" if r["kind"] == "ceiling" else LABELS[r["framework"]]
        blas_env = ", ".join(r["blas_env"][k] or "unset" for k in BLAS_ENV)
        row = (name, r["kernel"]["openblas"], r["kernel"]["framework"] or "-", blas_env)
        seen.setdefault(row, None)
    return rows + [f"| {' | '.join(row)} |" for row in seen]


def scaling_table(runs, figures, ceilings, threads):
    """Every workload's median-round rates at each thread count (with % of the ceiling),
    the scaling over 1 thread and, with --busy, the fraction of quiet speed kept."""
    scaled = sorted({t for w in figures.values() for t, _ in w["scaling"]})
    busy_threads = sorted({t for w in figures.values() for t, _ in w["kept"]})
    head = ["workload", "framework"] + [threads_text(t) for t in threads]
    head += [f"{threads_text(t)} / 1 thread" for t in scaled]
    head += [f"kept beside a competitor, {threads_text(t)}" for t in busy_threads]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, workload_runs in runs.items():
        fig = figures[workload]
        frameworks = [f for f in FRAMEWORKS if any(f == k[0] for k in workload_runs)]
        for framework in frameworks:
            unit = UNIT_SHORT[workloads.WORKLOADS[workload].unit][0]
            cells = [f"{workload} ({unit})", LABELS[framework]]
            for t in threads:
                quiet = workload_runs.get((framework, t, False))
                if quiet:
                    r = median_round(quiet)
                    share = percent_of_ceiling(r, ceilings)
                    cells.append(fmt(r["units_per_s"]) +
                                 ("" if share is None else f" ({share:.0f}%)") + busy_mark(r))
                else:
                    cells.append("-")
            cells += [ratio_text(fig["scaling"][(t, framework)])
                      if (t, framework) in fig["scaling"] else "-" for t in scaled]
            cells += [ratio_text(fig["kept"][(t, framework)], percent=True)
                      if (t, framework) in fig["kept"] else "-" for t in busy_threads]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def workload_section(workload, runs, figures, ceilings):
    """The markdown of one timed workload: its table of median rounds and its ratios."""
    ordered = sorted(runs, key=lambda key: (key[1], FRAMEWORKS.index(key[0]), key[2]))
    md = ["", f"## {TITLES[workload]}", ""]
    md += result_table([median_round(runs[key]) for key in ordered], ceilings)
    lines = ratio_lines(figures)
    if lines:
        md += ["", "Ratios of rates, median rounds (each round):", ""]
        md += [f"- {line}" for line in lines]
    return md


def markdown_report(args, env, records, ceilings, runs, figures, startup, memory):
    """The whole report: header, ceilings and kernels, rates by thread count, the targets,
    one section per timed workload, start-up, memory, method."""
    md = ["# reptile-np benchmark", ""] + [f"- {line}" for line in header_lines(env)]
    md += [f"- {line}" for line in ceiling_lines(ceilings)]
    md += ["", "## Kernels", ""] + kernel_table(records)
    if runs:
        md += ["", "## Rates by thread count (median rounds; % of the sgemm ceiling at that "
               "thread count)", ""] + scaling_table(runs, figures, ceilings, args.threads)
        md += ["", f"## Targets ({TARGET_THREADS} threads, median rounds)", ""]
        md += target_table(figures)
    for workload in runs:
        md += workload_section(workload, runs[workload], figures[workload], ceilings)
    if startup:
        md += ["", "## Start-up (Omniglot, command -> first meta-iteration)", ""]
        md += startup_table(startup)
    if memory:
        md += ["", "## Memory (Omniglot training process)", ""] + memory_table(memory)
    md += ["", METHOD.format(
        warmup="0.3 s" if args.quick else "2 s", repeats=args.repeats or (3 if args.quick else 7),
        repeat_s="0.1 s" if args.quick else "0.5 s", busy=BUSY, quiet_wait=f"{args.quiet_wait:g}",
        retries=args.retries, loss_rtol=f"{PARITY_LOSS_RTOL:g}", grad_rtol=f"{PARITY_GRAD_RTOL:g}",
        update_rtol=" (SGD), ".join(f"{PARITY_UPDATE_RTOL[o]:g}" for o in ("sgd", "adam")) + " (Adam)",
        competitor=f"python -c {COMPETITOR!r}", target_threads=TARGET_THREADS)]
    return "\n".join(md) + "\n"


def write_outputs(out_dir, records, markdown):
    """results.jsonl (every record, one a line) and results.md in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    (out_dir / "results.md").write_text(markdown)
    print(f"wrote {out_dir / 'results.jsonl'} and {out_dir / 'results.md'}")


def main():
    cpus_available = sorted(os.sched_getaffinity(0))
    args = parse_args(cpus_available)
    harness = Harness(args, cpus_available)
    print_preamble(harness, cpus_available)

    timed = [w for w in args.workloads if w in workloads.TIMED]
    ceilings = measure_ceilings(harness) if timed else {}
    runs, figures = {}, {}
    for workload in timed:
        print(f"\n{TITLES[workload]}")
        workload_runs = time_workload(harness, workload)
        if workload_runs:
            runs[workload] = workload_runs
            figures[workload] = workload_figures(workload_runs)
            for line in ratio_lines(figures[workload]):
                print("  " + line)
    startup = measure_startup(harness) if "startup" in args.workloads else []
    memory = measure_memory(harness) if "memory" in args.workloads else []

    markdown = markdown_report(args, harness.records[0], harness.records, ceilings, runs,
                               figures, startup, memory)
    print("\n" + markdown)
    if args.out_dir:
        write_outputs(args.out_dir, harness.records, markdown)
    return 1 if any(r["kind"] == "error" for r in harness.records) else 0


if __name__ == "__main__":
    sys.exit(main())
