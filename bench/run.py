"""Benchmark reptile-np against PyTorch and JAX on this CPU: one command, one run.

    python bench/run.py                                   # everything, all CPUs
    python bench/run.py --threads 2 --out-dir bench/out   # + results.jsonl, results.md
    python bench/run.py --quick --workloads sine --frameworks numba,numpy

Workloads (see workloads.py): omniglot and miniimagenet meta-iterations (5 tasks of
Adam steps), sine (serial Reptile, 5 SGD steps), eval (an Omniglot 1-shot evaluation
task: 50 Adam steps, then a prediction), startup (command to first meta-iteration,
cold and warm Numba cache) and memory (peak RSS of an Omniglot training process).

Frameworks: numba and numpy (our kernel backends, `reptile_np.kernels.set_backend`),
torch (eager, defaults), torch-tuned (channels_last + fused optimiser) and jax (the whole
meta-iteration jitted). Missing ones are skipped with one line saying what to install.

Every (workload, framework) pair runs in its own process (bench/worker.py) with the
thread count set through the environment before anything is imported; the timed
stage follows a separate burn-in. Nothing here changes the library's numerics.
"""
import argparse
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
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import workloads  # noqa: E402  (numpy only; the frameworks load in the workers)
from worker import (FRAMEWORKS, INSTALL, PARITY_GRAD_RTOL, PARITY_LOSS_RTOL,  # noqa: E402
                    PARITY_UPDATE_RTOL, module_for)

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


# ---------------------------------------------------------------------------- processes

def worker_env(threads):
    """The environment of every worker: thread counts pinned before any import.

    OPENBLAS_CORETYPE and anything else already set is left alone.
    """
    env = dict(os.environ)
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
        "quick": args.quick, "seed": args.seed, "dtype": "float32",
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical,
        "cpus_available": len(cpus_available), "loadavg": os.getloadavg(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("numpy", "numba", "torch", "jax", "jaxlib",
                                             "threadpoolctl", "psutil")},
        "git": git_revision(),
        "numba_fast_kernels_file": (ROOT / "reptile_np" / "kernels" / "fast.py").exists(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "REPTILE_NP_BACKEND": os.environ.get("REPTILE_NP_BACKEND"),
    }


def header_lines(env):
    v = env["versions"]
    cores = f", {env['physical_cores']} physical cores" if env["physical_cores"] else ""
    versions = " | ".join(f"{p} {v[p] or 'not installed'}" for p in ("numpy", "numba", "torch", "jax"))
    lines = [
        f"reptile-np benchmark, {env['date']}, git {env['git']}",
        f"command: {env['command']}",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs{cores}, "
        f"{env['cpus_available']} available) | threads: {env['threads']} | dtype: float32",
        f"python {env['python']} | {versions}",
        f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or '<unset>'} | load average before the "
        f"run: {' '.join(f'{x:.2f}' for x in env['loadavg'])}",
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
    """' *' when other processes used more than BUSY CPUs during the measurement."""
    return " *" if (record.get("other_cpu") or 0) > BUSY else ""


def result_table(records, ceiling):
    unit_rate, unit_ms = UNIT_SHORT[records[0]["unit"]]
    rows = [f"| framework | backend | {unit_rate} | {unit_ms} median [min-max] | ms/inner step "
            f"| GFLOP/s | % of sgemm | first call (s) | compile (s) | peak RSS (MB) | parity |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        s = r["s_per_unit"]
        share = f"{100 * r['gflop_s'] / ceiling:.1f}%" if ceiling else "-"
        if r["parity"] is None:
            check = "reference"
        else:
            check = ("ok" if r["parity"]["ok"] else "**FAIL**") + f" ({parity_numbers(r)})"
        rows.append(f"| {framework_label(r)}{busy_mark(r)} | {r['backend']} | {fmt(r['units_per_s'])} | "
                    f"{fmt(1e3 * s['median'])} [{fmt(1e3 * s['min'])}-{fmt(1e3 * s['max'])}] | "
                    f"{fmt(r['ms_per_inner_step'], 3)} | {fmt(r['gflop_s'])} | {share} | "
                    f"{fmt(r['first_call_s'])} | {fmt(r['compile_s'])} | {fmt(r['peak_rss_mb'], 0)} | "
                    f"{check} |")
    return rows


def parity_numbers(record):
    """The parity errors of a timing record: loss, and the update of the first unit."""
    p = record["parity"]
    update = f", update {p['update_rel_err']:.0e}" if "update_rel_err" in p else ""
    return f"loss {p['loss_rel_err']:.0e}{update}"


def speedups(records):
    """``{(ours, theirs): their median time / our median time}`` for one workload."""
    median = {r["framework"]: r["s_per_unit"]["median"] for r in records}
    return {(a, b): median[b] / median[a] for a in ("numba", "numpy") if a in median
            for b in ("torch", "torch-tuned", "jax", "numpy") if b in median and b != a}


def print_result(r):
    """One console line for a timing record."""
    rate, _ = UNIT_SHORT[r["unit"]]
    check = "-" if r["parity"] is None else ("parity ok" if r["parity"]["ok"] else "PARITY FAIL")
    busy = f"  (other processes: {r['other_cpu']:.1f} CPUs)" if (r["other_cpu"] or 0) > BUSY else ""
    print(f"  {framework_label(r):<14} {r['backend']:<20} {r['units_per_s']:10.2f} "
          f"{rate:<10} {r['ms_per_inner_step']:8.3f} ms/inner step  "
          f"{r['gflop_s']:6.2f} GFLOP/s  first call {r['first_call_s']:.2f} s  {check}{busy}")


def median_round(runs):
    """The run whose median time is the median of the rounds (the faster middle one of an
    even count)."""
    ordered = sorted(runs, key=lambda r: r["s_per_unit"]["median"])
    return ordered[(len(ordered) - 1) // 2]


def round_ratios(by_framework):
    """``{(ours, theirs): [ratio of round 1, round 2, ...]}`` over the rounds both ran."""
    by_round = {}
    for framework_runs in by_framework.values():
        for r in framework_runs:
            by_round.setdefault(r["round"], []).append(r)
    ratios = {}
    for round_index in sorted(by_round):
        for pair, ratio in speedups(by_round[round_index]).items():
            ratios.setdefault(pair, []).append(ratio)
    return ratios


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
- Each (workload, framework) ran in its own process, thread counts set by environment
  variables before import (and numba.set_num_threads / torch.set_num_threads); workers
  are pinned to --threads CPUs when fewer than all. Timed stage after a burn-in (first
  call, which includes JIT compilation, then calls for {warmup}); {repeats} repeats of
  >= {repeat_s}; median and min-max over repeats (IQR in results.jsonl). With --rounds N
  every framework is timed N times in N processes, the frameworks interleaved, and the
  tables keep each framework's median round (every round is in results.jsonl).
- ms/inner step = time per unit / optimiser steps per unit (it includes batch drawing
  and the outer interpolation).
- GFLOP/s counts the conv and linear layers only: forward multiply-adds (2 FLOPs each),
  x3 for forward + input gradient + weight gradient (the first layer's unused input
  gradient is counted); BatchNorm, pooling, activations and the optimiser are not.
- sgemm ceiling: median rate of a float32 1024x1024x1024 np.dot at the same thread count
  ({ceiling} GFLOP/s); im2col-shaped np.dot rates (the CNNs' forward conv matmuls, batch 10):
  Omniglot {omni} GFLOP/s, Mini-ImageNet {mini} GFLOP/s.
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
- Start-up: wall time from starting `python bench/worker.py first-iteration` to the end of
  the first meta-iteration; cold = fresh NUMBA_CACHE_DIR, warm = the same directory again.
  "compile or cache load" = first minus second meta-iteration (JAX: lower + compile).
- Memory: ru_maxrss of a child process (read with wait4) that runs Omniglot meta-iterations
  on the fixed synthetic tasks (no dataset in memory).
- Before each measurement the harness waits (up to {quiet_wait} s) for other processes to go
  idle, and measures again (up to {retries} times) when they were busy meanwhile, keeping
  the least disturbed attempt. * marks results during which other processes still used
  more than {busy} CPUs on average (from /proc/stat): their timings are unreliable, multi-
  threaded runtimes (Numba, OpenMP, OpenBLAS) slow down by far more than the share taken."""


# ---------------------------------------------------------------------------- main

def parse_args(cpus_available):
    """The command line, checked, with the defaults that depend on --quick filled in."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(cpus_available),
                        help="threads for every framework (default: CPUs available)")
    parser.add_argument("--quick", action="store_true", help="short burn-in, few repeats")
    parser.add_argument("--workloads", default=",".join(workloads.ALL),
                        help="comma-separated subset of " + ",".join(workloads.ALL))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma-separated subset of " + ",".join(FRAMEWORKS))
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
                        help="time every (workload, framework) this many times, in separate "
                             "processes, the frameworks interleaved; tables keep each "
                             "framework's median round and list the ratio of every round")
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
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
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
        self.env = worker_env(args.threads)
        self.cpus = set(cpus_available[:args.threads]) if args.threads < len(cpus_available) \
            else None
        self.records = [environment(args, cpus_available)]
        self.missing = set()
        quick = ["--quick"] if args.quick else []
        self.common = ["--threads", str(args.threads), "--seed", str(args.seed), *quick]

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

    def least_disturbed(self, worker_args, label, extra_env, retry):
        """Run a worker once the machine is quiet; measure again (up to --retries times)
        when other processes were busy meanwhile. Returns the least disturbed (records, info)."""
        retries = self.args.retries if retry else 0
        best = None
        for attempt in range(1 + retries):
            waited = wait_for_quiet(self.args.quiet_wait)
            found, info = spawn(worker_args, dict(self.env, **(extra_env or {})), self.cpus)
            info.update(waited_s=waited, attempt=attempt + 1)
            if best is None or (info["other_cpu"] or 0) < (best[1]["other_cpu"] or 0):
                best = found, info
            busy = info["other_cpu"] or 0
            if busy <= BUSY or info["returncode"] != 0 or not found:
                break
            if attempt < retries:
                print(f"  ({label}: other processes used {busy:.1f} CPUs meanwhile; "
                      f"measuring again)")
        return best

    def run_worker(self, worker_args, label, extra_env=None, retry=True):
        """The measurement records of one worker, each with its process's info attached.

        A missing framework is noted; a failed worker is printed and recorded as an error.
        """
        found, info = self.least_disturbed(worker_args, label, extra_env, retry)
        absent = [r for r in found if r["kind"] == "missing"]
        for record in absent:
            self.note_missing(record)
        found = [r for r in found if r["kind"] != "missing"]
        if info["returncode"] != 0 or not (found or absent):
            print(f"ERROR in {label} (exit {info['returncode']}):\n{info['stderr_tail']}")
            self.records.append({"kind": "error", "label": label, **info})
        for record in found:
            record.update({k: info[k] for k in ("peak_rss_mb", "other_cpu", "wall_s",
                                                "start_wall", "waited_s", "attempt")})
        return found


def print_preamble(harness, cpus_available):
    """The environment, the optional packages missing, and a warning on a busy machine."""
    env = harness.records[0]
    for line in header_lines(env):
        print(line)
    optional = [p for p in ("threadpoolctl", "psutil") if not importlib.util.find_spec(p)]
    if optional:
        print(f"optional: pip install {' '.join(optional)}  (BLAS thread and physical-core "
              "reporting)")
    if env["loadavg"][0] > 0.5 * len(cpus_available):
        print(f"WARNING: the machine is busy (load average {env['loadavg'][0]:.2f} on "
              f"{len(cpus_available)} CPUs); timings will be noisy.")


def measure_ceiling(harness):
    """The sgemm ceiling record ({} when the worker failed)."""
    ceiling = {}
    for record in harness.run_worker(["ceiling", *harness.common], "sgemm ceiling"):
        harness.records.append(record)
        ceiling = record
        print(f"sgemm ceiling (1024^3 float32 np.dot, {harness.args.threads} threads): "
              f"{record['sgemm_1024_gflop_s']:.1f} GFLOP/s; im2col shapes: Omniglot "
              f"{record['sgemm_im2col_omniglot_gflop_s']:.1f}, Mini-ImageNet "
              f"{record['sgemm_im2col_miniimagenet_gflop_s']:.1f} GFLOP/s")
    return ceiling


def time_workload(harness, workload):
    """Every framework on one workload, --rounds times, the frameworks interleaved.

    Returns:
        ``{framework: [record of each round]}``.
    """
    args = harness.args
    extra = ["--repeats", str(args.repeats)] if args.repeats else []
    extra += ["--budget", str(args.budget)] if args.budget else []
    by_framework = {}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"  round {round_index + 1} of {args.rounds}")
        for framework in args.frameworks:
            if not harness.available(framework):
                continue
            for r in harness.run_worker(["time", "--framework", framework, "--workload",
                                         workload, *harness.common, *extra],
                                        f"{workload}/{framework}"):
                r["round"] = round_index + 1
                harness.records.append(r)
                by_framework.setdefault(framework, []).append(r)
                print_result(r)
    return by_framework


def print_ratios(results, rounds):
    """One console line per (ours, theirs) ratio of a workload, with every round's."""
    for (ours, theirs), ratio in speedups(results).items():
        spread = rounds.get((ours, theirs), [])
        per_round = f" (rounds: {', '.join(f'{x:.2f}' for x in spread)})" if len(spread) > 1 else ""
        print(f"  {LABELS[ours]} / {LABELS[theirs]} = {ratio:.2f}x{per_round}")


def startup_runs(frameworks):
    """(framework, Numba cache state) of each start-up probe: numba cold, then warm."""
    runs = [(f, "cold" if f == "numba" else None) for f in frameworks if f != "torch-tuned"]
    if "numba" in frameworks:
        runs.insert(runs.index(("numba", "cold")) + 1, ("numba", "warm"))
    return runs


def measure_startup(harness):
    """Command -> first Omniglot meta-iteration of each framework; the start-up records."""
    print("\nStart-up: command -> first Omniglot meta-iteration")
    startup = []
    cache_dir = tempfile.mkdtemp(prefix="reptile-np-numba-cache-")
    try:
        for framework, cache in startup_runs(harness.args.frameworks):
            if not harness.available(framework):
                continue
            extra_env = {"NUMBA_CACHE_DIR": cache_dir} if framework == "numba" else None
            for r in harness.run_worker(["first-iteration", "--framework", framework,
                                         "--workload", "omniglot", *harness.common],
                                        f"startup/{framework}", extra_env,
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
    """Peak RSS of an Omniglot training process of each framework; the memory records."""
    args = harness.args
    iterations = args.memory_iterations or (3 if args.quick else 20)
    print(f"\nMemory: peak RSS of an Omniglot training process ({iterations} meta-iterations)")
    memory = []
    for framework in args.frameworks:
        if framework == "torch-tuned" or not harness.available(framework):
            continue
        for r in harness.run_worker(["train", "--framework", framework, "--workload", "omniglot",
                                     "--iterations", str(iterations), *harness.common],
                                    f"memory/{framework}", retry=False):
            harness.records.append(r)
            memory.append(r)
            print(f"  {framework_label(r):<14} {r['peak_rss_mb']:7.0f} MB")
    return memory


def workload_section(workload, results, rounds, ceiling, num_rounds):
    """The markdown of one timed workload: its table, its ratios, every round's ratios."""
    md = ["", f"## {TITLES[workload]}", ""] + result_table(results, ceiling.get("sgemm_1024_gflop_s"))
    ratios = speedups(results)
    if ratios:
        md += ["", "Speed-ups (their median time / ours): " + ", ".join(
            f"{LABELS[a]} / {LABELS[b]} = {r:.2f}x" for (a, b), r in ratios.items())]
    spread = {pair: values for pair, values in rounds.items() if len(values) > 1}
    if spread:
        md += ["", f"Each of the {num_rounds} rounds (frameworks interleaved, the table keeps "
               "each one's median round): " + "; ".join(
                   f"{LABELS[a]} / {LABELS[b]} = " + ", ".join(f"{x:.2f}x" for x in values)
                   for (a, b), values in spread.items())]
    return md


def markdown_report(args, env, ceiling, results, rounds, startup, memory):
    """The whole report: header, one section per timed workload, start-up, memory, method."""
    md = ["# reptile-np benchmark", ""] + [f"- {line}" for line in header_lines(env)]
    if ceiling:
        md.append(f"- sgemm ceiling: {ceiling['sgemm_1024_gflop_s']:.1f} GFLOP/s "
                  f"(float32 1024^3 np.dot, {args.threads} threads)")
    for workload in results:
        md += workload_section(workload, results[workload], rounds[workload], ceiling,
                               args.rounds)
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
        ceiling=fmt(ceiling.get("sgemm_1024_gflop_s")),
        omni=fmt(ceiling.get("sgemm_im2col_omniglot_gflop_s")),
        mini=fmt(ceiling.get("sgemm_im2col_miniimagenet_gflop_s")))]
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
    ceiling = measure_ceiling(harness) if timed else {}
    results, rounds = {}, {}
    for workload in timed:
        print(f"\n{TITLES[workload]}")
        by_framework = time_workload(harness, workload)
        if by_framework:
            results[workload] = [median_round(runs) for runs in by_framework.values()]
            rounds[workload] = round_ratios(by_framework)
            print_ratios(results[workload], rounds[workload])
    startup = measure_startup(harness) if "startup" in args.workloads else []
    memory = measure_memory(harness) if "memory" in args.workloads else []

    markdown = markdown_report(args, harness.records[0], ceiling, results, rounds, startup, memory)
    print("\n" + markdown)
    if args.out_dir:
        write_outputs(args.out_dir, harness.records, markdown)
    return 1 if any(r["kind"] == "error" for r in harness.records) else 0


if __name__ == "__main__":
    sys.exit(main())
