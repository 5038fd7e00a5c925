"""benchmarks/gpu.py, the one-shot GPU run, in its CPU dry run: every step runs from a copy
of src/ on PYTHONPATH (no pip install), writes its files under one folder, and the summary
lists each step's status and wall time."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
STEPS = ["setup", "sync", "verify", "bench-float32", "bench-float32-compiled", "bench-bfloat16",
         "bench-bfloat16-compiled", "training", "tests"]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("gpu-results")
    env = {**os.environ, "ENTROLOSS_GPU_SYNTHETIC": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    return out, result


def test_dry_run_passes_every_step_and_writes_the_summary(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == STEPS
    for name, s in steps.items():
        expected = "skipped" if name.endswith("-compiled") else "ok"
        assert s["status"] == expected, s
        assert s["seconds"] >= 0 and isinstance(s["note"], str)
    text = (out / "summary.txt").read_text()
    assert all(name in text for name in STEPS)


def test_dry_run_imports_the_copy_of_src_not_an_installed_package(dry_run):
    out, _ = dry_run
    env = json.loads((out / "environment.json").read_text())
    assert "entroloss-gpu-" in env["entroloss"] and env["versions"]["array_api_compat"]
    copy = pathlib.Path(env["entroloss"]).parent  # removed at the end of the run
    assert pathlib.Path(env["backends"]) == copy / "backends" / "__init__.py"  # as pip maps it


def test_dry_run_figures(dry_run):
    out, _ = dry_run
    for name in ("verify.json", "verify.txt", "bench-float32.json", "bench-float32.txt",
                 "bench-bfloat16.json", "floor.json", "training.json", "sync.log", "tests.log"):
        assert (out / name).is_file(), name
    verify = json.loads((out / "verify.json").read_text())
    assert verify["ok"] is True and verify["rows"]
    bench = json.loads((out / "bench-float32.json").read_text())
    assert bench["ok"] and {r["loss"] for r in bench["rows"]} >= {"cross_entropy", "focal"}
    assert any(r["ops"] for r in bench["rows"] if r["backend"] == "torch-cpu")
    assert any(r["backend"] == "torch-cpu" and r["dtype"] == "bfloat16"
               for r in json.loads((out / "bench-bfloat16.json").read_text())["rows"])
    floor = json.loads((out / "floor.json").read_text())
    assert all(v["floor_us"] > 0 and v["GBps"] > 0 for v in floor.values()) and floor
    training = json.loads((out / "training.json").read_text())
    assert training["data"].startswith("synthetic") and training["rows"]
    assert {r["backend"] for r in training["rows"]} == {"numpy", "torch-cpu"}
    assert "passed" in (out / "sync.log").read_text()


def test_synthetic_data_has_mnist1d_shape():
    x, y, xt, yt = _script().synthetic_mnist1d(1000)
    assert x.shape == (800, 40) and xt.shape == (200, 40) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(10)) and len(yt) == 200
