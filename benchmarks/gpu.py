"""The one-shot GPU run (issue 12, item 4): every GPU figure of entroloss in one command, on
a bare offline machine that has torch, jax, cupy, numpy and pytest, in under 8 minutes.

    make gpu                                  # = python3 benchmarks/gpu.py
    python3 benchmarks/gpu.py --out DIR       # default: $OUT if set, else gpu-results/
    python3 benchmarks/gpu.py --dry-run       # the same steps on the CPU, tiny sizes (~1 min)

Nothing is installed with pip from a registry: ``src/entroloss`` is copied into a temporary
folder with ``backends/`` as ``entroloss/backends`` (the layout ``pip install`` makes) and
that folder goes first on ``PYTHONPATH``. entroloss needs ``array_api_compat``; where it is
not importable, carry its wheel in ``.whl/`` at the repository root (on a machine with a
network: ``pip download --no-deps -d .whl array-api-compat``) and this script installs it
with ``pip install --no-index --no-deps --target``. The steps, each in a process of its own
with a time cap, so that one failure or overrun does not stop the others:

1. ``setup``: the package copy, the wheel, the versions and ``nvidia-smi`` (environment.json);
2. ``sync``: tests/test_sync.py (no device-to-host sync per call: torch's sync debug mode,
   JAX's transfer guard, CuPy's allow_synchronize; sync.log);
3. ``verify``: ``entroloss verify`` on every GPU backend (verify.json, verify.txt);
4. ``bench-<dtype>`` and ``bench-<dtype>-compiled``: the bench grid at 8192x32768 in float32
   and bfloat16, every loss against the native cross entropy and the user's composition:
   torch eager (and compiled), JAX under jit (optax), CuPy, and the bandwidth floor, one read
   of the logits and one write of the gradient (bench-*.json, bench-*.txt, floor.json);
5. ``training``: a short MNIST-1D training per GPU backend and loss, on a synthetic data set
   of MNIST-1D's shape where the mnist1d package is not importable (training.json says which);
6. ``tests``: the GPU parametrizations of the suite (torch-cuda, jax-gpu, cupy) and the sync
   tests, ``pytest -m "not slow" -k "(cuda or gpu or cupy or sync) and not gpu_script"``,
   4 workers where pytest-xdist is installed, with what is left of the time (tests.log).

summary.json and summary.txt list each step's status, wall time and files. The exit status
is 0 when every step that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_SHAPE = (8192, 32768)
DRY_SHAPE = (64, 10)
BUDGET_S = 470  # the whole run, under the 8 minutes of the issue (--budget changes it)
# (step, time cap in seconds on the GPU); the tests get what is left, up to their cap
CAPS = {"setup": 40, "sync": 45, "verify": 60, "bench-float32": 60, "bench-float32-compiled": 90,
        "bench-bfloat16": 45, "bench-bfloat16-compiled": 75, "training": 60, "tests": 180}
# the torch-cuda, jax-gpu and cupy parametrizations and tests/test_sync.py (3389 tests at
# this writing); not this script's own dry-run tests (test_gpu_script.py)
TEST_SELECTION = ["-m", "not slow", "-k", "(cuda or gpu or cupy or sync) and not gpu_script"]


# --- the orchestrator ---------------------------------------------------------------------

class Run:
    def __init__(self, out: Path, dry_run: bool, budget_s: float = BUDGET_S):
        self.out, self.dry_run, self.steps, self.budget_s = out, dry_run, [], budget_s
        self.work = None  # the temporary folder of the package copy, removed at the end
        self.start = time.monotonic()
        self.env = dict(os.environ)
        # torch, JAX and CuPy share the GPU in one process: JAX must not take 75% of it
        self.env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def step(self, name: str, fn, cap: float | None = None) -> None:
        """Run ``fn(timeout)`` -> (status, note, files); record its status and wall time."""
        cap = CAPS.get(name, 60) if cap is None else cap
        timeout = max(5.0, min(cap, self.left())) if not self.dry_run else 120.0
        t = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} (cap {timeout:.0f} s) ...", flush=True)
        try:
            status, note, files = fn(timeout)
        except Exception as error:  # noqa: BLE001 - a step's failure must not stop the run
            status, note, files = "failed", f"{type(error).__name__}: {error}", []
        seconds = time.monotonic() - t
        self.steps.append({"step": name, "status": status, "seconds": round(seconds, 1),
                           "note": note, "files": files})
        print(f"    {status} in {seconds:.1f} s: {note}", flush=True)
        self.write_summary()

    def call(self, args: list, timeout: float, log: str | None = None, stdout: str | None = None):
        """Run ``args`` (a process group, killed whole on timeout): (returncode or None on
        timeout, the tail of its output). ``log``: stdout and stderr to that file;
        ``stdout``: stdout alone to that file, stderr appended to ``<step>.stderr``."""
        out_path = self.out / (log or stdout) if (log or stdout) else None
        with open(out_path, "w") if out_path else open(os.devnull, "w") as out, \
                tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT if log else err,
                                    start_new_session=True, text=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
            err.seek(0)
            errors = err.read()
        if errors and stdout:
            (self.out / (Path(stdout).stem + ".stderr")).write_text(errors)
        tail = errors[-1500:] if errors else (out_path.read_text()[-1500:] if out_path else "")
        return code, tail

    def self_step(self, name: str, timeout: float, *extra) -> tuple:
        """This script's ``--step NAME`` in a fresh process, with the package copy."""
        args = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out",
                str(self.out), *(["--dry-run"] if self.dry_run else []), *extra]
        code, tail = self.call(args, timeout, log=f"{name}.log")
        if code is None:
            return "timeout", f"stopped after {timeout:.0f} s; partial output in {name}.log", \
                _files(self.out, name)
        if code != 0:
            return "failed", f"exit {code}: {_last_line(tail)}", _files(self.out, name)
        return "ok", _last_line(tail), _files(self.out, name)

    def write_summary(self) -> None:
        data = {"dry_run": self.dry_run, "out": str(self.out), "budget_s": self.budget_s,
                "total_s": round(time.monotonic() - self.start, 1), "steps": self.steps}
        (self.out / "summary.json").write_text(json.dumps(data, indent=1))
        lines = [f"entroloss one-shot GPU run{' (dry run on the CPU)' if self.dry_run else ''}: "
                 f"{data['total_s']} s", ""]
        lines += [f"{s['step']:<26}{s['status']:<9}{s['seconds']:>7.1f} s  {s['note']}"
                  for s in self.steps]
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n")


def _files(out: Path, prefix: str) -> list:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(prefix))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def setup(run: Run, timeout: float) -> tuple:
    """The package copy on PYTHONPATH, array_api_compat from .whl/ if needed, versions."""
    work = run.work = Path(tempfile.mkdtemp(prefix="entroloss-gpu-"))
    package = work / "pkg" / "entroloss"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "entroloss", package, ignore=ignore)
    shutil.copytree(ROOT / "backends", package / "backends", ignore=ignore)
    paths = [str(work / "pkg")]
    notes = []
    if not _importable(run, paths, "array_api_compat"):
        wheels = sorted((ROOT / ".whl").glob("*.whl")) if (ROOT / ".whl").is_dir() else []
        if wheels:
            site = work / "site"
            code, tail = run.call([sys.executable, "-m", "pip", "install", "--no-index",
                                   "--no-deps", "--target", str(site), *map(str, wheels)],
                                  timeout, log="setup-pip.log")
            paths.append(str(site))
            notes.append(f"installed {', '.join(w.name for w in wheels)} from .whl/ (exit {code})")
        if not _importable(run, paths, "array_api_compat"):
            run.env["PYTHONPATH"] = os.pathsep.join(paths)
            return "failed", ("array_api_compat is not importable: carry its wheel in .whl/ at "
                              "the repository root (pip download --no-deps -d .whl "
                              "array-api-compat) and run again; the other steps will fail"), []
    run.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    code, tail = run.call([sys.executable, str(Path(__file__).resolve()), "--step", "environment",
                           "--out", str(run.out)], timeout, log="setup.log")
    if code != 0:
        return "failed", f"the package copy does not import: {_last_line(tail)}", ["setup.log"]
    env = json.loads((run.out / "environment.json").read_text())
    notes.append(f"entroloss from {env['entroloss']}; " + ", ".join(
        f"{k} {v}" for k, v in env["versions"].items()))
    if env.get("gpu"):
        notes.append(f"GPU: {env['gpu']}")
    return "ok", "; ".join(notes), ["environment.json", "setup.log"]


def _importable(run: Run, paths: list, module: str) -> bool:
    env = {**run.env, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-c", f"import {module}"], env=env, cwd=ROOT,
                          capture_output=True).returncode == 0


def pytest_step(run: Run, timeout: float, name: str, selection: list) -> tuple:
    args = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", *selection]
    if _importable(run, run.env.get("PYTHONPATH", "").split(os.pathsep), "pytest_timeout"):
        args.append("--timeout=90")  # one hung test does not take the whole cap
    if not run.dry_run and name == "tests" and _importable(
            run, run.env.get("PYTHONPATH", "").split(os.pathsep), "xdist"):
        args += ["-n", "4"]
    code, tail = run.call(args, timeout, log=f"{name}.log")
    files = [f"{name}.log"]
    if code is None:
        return "timeout", f"stopped after {timeout:.0f} s; what ran is in {name}.log", files
    # 0: all passed; 5: nothing selected
    return ("ok" if code == 0 else "failed"), f"exit {code}: {_last_line(tail)}", files


def orchestrate(out: Path, dry_run: bool, budget_s: float = BUDGET_S) -> int:
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, dry_run, budget_s)
    run.step("setup", lambda t: setup(run, t))
    run.step("sync", lambda t: pytest_step(run, t, "sync", ["tests/test_sync.py"]))
    run.step("verify", lambda t: run.self_step("verify", t))
    for dtype in ("float32", "bfloat16"):
        run.step(f"bench-{dtype}", lambda t, d=dtype: run.self_step(f"bench-{d}", t))
        if dry_run:
            run.steps.append({"step": f"bench-{dtype}-compiled", "status": "skipped",
                              "seconds": 0.0, "files": [],
                              "note": "dry run: torch.compile on the CPU takes minutes "
                              "(tests/test_bench.py's slow test covers it)"})
        else:
            name = f"bench-{dtype}-compiled"
            run.step(name, lambda t, n=name: run.self_step(n, t))
    run.step("training", lambda t: run.self_step("training", t))
    selection = (["tests/test_sync.py"] if dry_run else ["tests"]) + TEST_SELECTION
    run.step("tests", lambda t: pytest_step(run, t, "tests", selection),
             cap=max(CAPS["tests"], run.left()) if run.budget_s > BUDGET_S else CAPS["tests"])
    run.write_summary()
    if run.work:
        shutil.rmtree(run.work, ignore_errors=True)
    print((out / "summary.txt").read_text())
    failed = [s["step"] for s in run.steps if s["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


# --- the steps that run inside the package copy ------------------------------------------------

def device_of(dry_run: bool) -> str:
    return "cpu" if dry_run else "cuda"


def step_environment(out: Path, dry_run: bool) -> None:
    import importlib

    import entroloss

    versions = {"python": sys.version.split()[0], "entroloss": entroloss.__version__}
    for lib in ("numpy", "torch", "jax", "jaxlib", "cupy", "optax", "array_api_compat",
                "array_api_strict", "mnist1d", "hypothesis", "sklearn", "pytest"):
        try:
            versions[lib] = getattr(importlib.import_module(lib), "__version__", "?")
        except Exception:  # noqa: BLE001 - absent or broken: say so
            versions[lib] = None
    import entroloss.backends

    info = {"entroloss": entroloss.__file__, "backends": entroloss.backends.__file__,
            "versions": versions, "machine": platform.machine(),
            "cpus": os.cpu_count(), "dry_run": dry_run}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        info["nvidia_smi"] = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
        info["nvidia_smi_driver"] = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    (out / "environment.json").write_text(json.dumps(info, indent=1))
    print(f"entroloss {entroloss.__version__} from {entroloss.__file__}")


def step_verify(out: Path, dry_run: bool) -> int:
    from dataclasses import asdict

    from entroloss.tools import verify

    rows, missing = verify.run("numpy" if dry_run else None, device_of(dry_run))
    (out / "verify.json").write_text(json.dumps(
        {**verify.summary(rows), "rows": [asdict(r) for r in rows],
         "skipped": [{"backend": b, "reason": r} for b, r in missing]}, indent=1))
    (out / "verify.txt").write_text(verify.table(rows, missing) + "\n")
    bad = [r for r in rows if not r.ok]
    print(f"{len(rows)} checks on {sorted({r.backend for r in rows})}, {len(bad)} mismatches")
    return 0 if rows and not bad else 1


def step_bench(out: Path, dry_run: bool, dtype: str, compiled: bool) -> int:
    from entroloss.tools import bench

    shape = DRY_SHAPE if dry_run else GPU_SHAPE
    name = f"bench-{dtype}" + ("-compiled" if compiled else "")
    # the compiled step times torch alone: JAX and CuPy are in bench-<dtype>.json
    rows, missing = bench.run("torch" if compiled else None, device_of(dry_run), shapes=(shape,),
                              dtypes=(dtype,), repeats=3 if dry_run else 15,
                              budget_s=1 if dry_run else 20, compiled=compiled)
    if compiled:  # only what torch.compile adds; the eager rows are in bench-<dtype>.json
        rows = [r for r in rows if r.mode == "compiled"]
    ran = {"device": device_of(dry_run), "shapes": [list(shape)], "dtypes": [dtype],
           "compiled": compiled, "dry_run": dry_run,
           "platforms": list(dict.fromkeys(r.backend for r in rows)), "timings": len(rows)}
    (out / f"{name}.json").write_text(json.dumps(bench.report(rows, missing, ran), indent=1))
    (out / f"{name}.txt").write_text(bench.table(rows, missing) + "\n")
    floors = {f"{r.backend} {r.shape[0]}x{r.shape[1]} {r.dtype}":
              {"floor_us": r.floor_us, "GBps": r.floor_gbps,
               "what": "torch.empty_like(z).copy_(z): read the logits once, write a gradient once"}
              for r in rows if r.floor_us}
    if floors and not compiled:
        path = out / "floor.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**saved, **floors}, indent=1))
    print(f"{len(rows)} comparisons on {ran['platforms']}" +
          "".join(f"; floor {k}: {v['floor_us']:.1f} us, {v['GBps']:.3g} GB/s" for k, v in floors.items()))
    return 0 if rows else 1


def synthetic_mnist1d(samples: int, seed: int = 0) -> tuple:
    """Data of MNIST-1D's shape (40 features, 10 classes, 80/20 split), standardised: ten
    smooth random templates, shifted and scaled per sample, plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 40)
    templates = np.stack([np.sin(2 * np.pi * (k + 1) * grid / 3 + rng.uniform(0, 6.28))
                          for k in range(10)])
    y = rng.integers(0, 10, samples)
    shifts = rng.integers(-4, 5, samples)
    x = np.stack([np.roll(templates[c], s) for c, s in zip(y, shifts, strict=True)])
    x = x * rng.uniform(0.7, 1.3, (samples, 1)) + rng.normal(0, 0.6, x.shape)
    split = int(0.8 * samples)
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    return x[:split], y[:split], x[split:], y[split:]


def step_training(out: Path, dry_run: bool) -> int:
    from entroloss.tools import training
    from entroloss.tools.platforms import available

    samples, epochs = (500, 1) if dry_run else (5000, 5)
    try:
        if os.environ.get("ENTROLOSS_GPU_SYNTHETIC"):  # the fallback, on demand (tests)
            raise ImportError
        import mnist1d  # noqa: F401

        data, source = training.load_mnist1d(samples), f"MNIST-1D ({samples} samples, mnist1d package)"
    except ImportError:
        data = synthetic_mnist1d(samples)
        why = ("ENTROLOSS_GPU_SYNTHETIC is set" if os.environ.get("ENTROLOSS_GPU_SYNTHETIC")
               else "the mnist1d package is not importable here")
        source = f"synthetic, MNIST-1D's shape (40 features, 10 classes, {samples} samples): {why}"
    platforms, missing = available(None, device_of(dry_run))
    platforms = [p for p in platforms if p.library != "array_api_strict"]
    if dry_run:
        platforms = [p for p in platforms if p.id in ("numpy", "torch-cpu")]
    settings = training.SETTINGS if not dry_run else training.SETTINGS[:2]
    rows = []

    def save():  # after every platform: a timeout keeps what finished
        (out / "training.json").write_text(json.dumps(
            {"data": source, "epochs": epochs, "rows": rows,
             "skipped": [{"backend": b, "reason": r} for b, r in missing]}, indent=1))

    for p in platforms:
        for setting in settings:
            probabilities, seconds = training.train(p, setting, data, epochs=epochs, seed=0)
            rows.append({"backend": p.id, "setting": setting.label, "loss": setting.loss.name,
                         "options": dict(setting.options), "epochs": epochs,
                         "seconds": round(seconds, 2), **training.calibration(probabilities, data[3])})
            print(f"{p.id:<11}{setting.label:<24}acc {rows[-1]['accuracy']:.3f}  {seconds:.1f} s",
                  flush=True)
        save()
    save()
    print(f"{len(rows)} trainings on {[p.id for p in platforms]}; data: {source}")
    return 0 if rows else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $OUT if set, else gpu-results/)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU with tiny sizes (no GPU needed)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help="the whole run's time; each step is capped by what is left "
                        "(default: %(default)s; the tests run last and get the rest)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, inside the package copy
    args = parser.parse_args(argv)
    out = (args.out or Path(os.environ.get("OUT") or ROOT / "gpu-results")).resolve()
    if args.step is None:
        return orchestrate(out, args.dry_run, args.budget)
    if args.step == "environment":
        step_environment(out, args.dry_run)
        return 0
    if args.step == "verify":
        return step_verify(out, args.dry_run)
    if args.step.startswith("bench-"):
        dtype = args.step.split("-")[1]
        return step_bench(out, args.dry_run, dtype, args.step.endswith("-compiled"))
    if args.step == "training":
        return step_training(out, args.dry_run)
    parser.error(f"unknown step {args.step!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
