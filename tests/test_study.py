"""The training study (benchmarks/training/study.py): its quick profile runs end to end and
writes every condition x loss x metric with finite numbers and intervals; the corruptions
of the training set are what the page says they are; SCE is the mix_ent setting the page
says it is."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "training"


def _module(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    run = subprocess.run([sys.executable, str(SCRIPTS / "study.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, cwd=out, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _finite_interval(value):
    return len(value) == 2 and all(math.isfinite(v) for v in value) and value[1] >= 0


def test_quick_profile_has_every_condition_loss_and_metric(quick):
    _, report = quick
    study = _module("study")
    assert report["profile"] == "quick" and report["seeds"] == 2
    losses = [s.label for s in study.LOSSES]
    assert any("SCE" in k for k in losses) and "label smoothing 0.1" in losses
    for dataset in ("mnist1d", "digits"):
        conditions = report["datasets"][dataset]["conditions"]
        assert list(conditions) == [c.name for c in study.CONDITIONS]
        assert {"clean", "symmetric-20", "symmetric-40", "pairflip-20", "pairflip-40",
                "longtail-10", "longtail-100"} == set(conditions)
        for name, c in conditions.items():
            expected = losses + (["MIN-ENT learnable"] if name == "clean" else [])
            assert list(c["results"]) == expected, name
            for loss in expected:
                for metric in study.METRICS:
                    assert _finite_interval(c["results"][loss][metric]), (dataset, name, loss, metric)
                    assert len(c["per_seed"][loss][metric]) == 2
                    if loss != study.REFERENCE:
                        assert _finite_interval(c["vs_cross_entropy"][loss][metric])
        assert report["datasets"][dataset]["learnt_final"]
    knobs = report["sweep"]["knobs"]
    assert set(knobs) == {"entropy_weight", "reverse_weight", "gamma", "label_smoothing"}
    for k in knobs.values():
        assert len(k["points"]) >= 5
        for p in k["points"]:
            assert all(_finite_interval(p["results"][m]) for m in study.METRICS)
    assert report["minutes"] > 0 and "core" in report["hardware"]


def test_quick_profile_writes_the_page_and_plots(quick):
    out, _ = quick
    page = (out / "results.md").read_text()
    assert "## mnist1d" in page and "## digits" in page and "Knob sweep" in page
    for name in ("results-sweep.png", "results-mnist1d-noise.png", "results-digits-longtail.png",
                 "results-mnist1d-reliability.png", "results-digits-learnt.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in page


def test_corruptions_flip_and_keep_what_they_say():
    st = _module("study_torch")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 50)
    x = rng.normal(size=(len(y), 3))
    _, noisy, true = st.corrupt(st.Condition("symmetric", 0.4), x, y, 3, "d")
    assert (true == y).all() and (noisy != y).sum() == 200  # exactly 40%, all to another class
    assert len(set(noisy[noisy != y] - y[noisy != y])) > 1  # not a fixed shift
    _, flipped, _ = st.corrupt(st.Condition("pairflip", 0.2), x, y, 3, "d")
    changed = flipped != y
    assert all(changed[y == c].sum() == 10 for c in range(10))  # 20% of every class
    assert ((flipped[changed] - y[changed]) % 10 == 1).all()  # each to the next class
    x_lt, y_lt, _ = st.corrupt(st.Condition("longtail", 10), x, y, 3, "d")
    counts = np.bincount(y_lt, minlength=10)
    assert counts[0] == 50 and counts[-1] == 5 and (np.diff(counts) <= 0).all()
    assert len(x_lt) == len(y_lt)
    # a seed fixes the corruption; another seed draws another one
    assert (st.corrupt(st.Condition("symmetric", 0.4), x, y, 3, "d")[1] == noisy).all()
    assert (st.corrupt(st.Condition("symmetric", 0.4), x, y, 4, "d")[1] != noisy).any()


def test_sce_is_the_mix_ent_setting_the_page_names():
    import entroloss as el

    study = _module("study")
    rng = np.random.default_rng(1)
    logits, y = rng.normal(size=(6, 10)), rng.integers(0, 10, 6)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_y = p[np.arange(6), y]
    alpha, beta, a = 0.1, 1.0, -4.0
    # Wang et al.: alpha CE + beta RCE, RCE = -A (1 - p_y); mix_ent adds -beta log(1+eps) p_y
    expected = alpha * -np.log(p_y) + beta * (-a * (1 - p_y) - np.log1p(math.exp(a)) * p_y)
    got = el.mix_ent(logits, y, reduction="none", **study.SCE.options)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert study.SCE.options == {"ce_weight": alpha, "reverse_weight": beta, "eps": math.exp(a)}


# --- the published page's sentences against its data (docs/results.json) --------------------

DOCS = SCRIPTS.parent.parent / "docs"
LS, FOCAL, ADAPTIVE = "label smoothing 0.1", "focal gamma=2", "adaptive CE"


@pytest.fixture(scope="module")
def published():
    return json.loads((DOCS / "results.json").read_text())["datasets"]


def _text(name):
    return " ".join((DOCS / name).read_text().split())  # line breaks do not matter


def _ece(published, dataset, condition, loss):
    return published[dataset]["conditions"][condition]["results"][loss]["ece"][0]


def _lowest_ece(published, dataset, condition):
    results = published[dataset]["conditions"][condition]["results"]
    return min(results, key=lambda loss: results[loss]["ece"][0])


def test_long_tail_count_of_differences_excluding_zero(published):
    settings = [("mnist1d", "longtail-10"), ("mnist1d", "longtail-100"), ("digits", "longtail-100")]
    diffs = [published[d]["conditions"][c]["vs_cross_entropy"][loss][metric]
             for d, c in settings for loss in (LS, FOCAL, ADAPTIVE) for metric in ("nll", "ece")]
    assert all(mean < 0 for mean, _ in diffs)  # "all lower NLL and ECE"
    excluding = sum(abs(mean) > half for mean, half in diffs)
    assert f"{excluding} of these {len(diffs)} differences exclude 0" in _text("results-conclusion.md")


def test_best_calibrated_claims_name_the_lowest_ece(published):
    conclusion, choosing = _text("results-conclusion.md"), _text("choosing.md")
    for condition in ("pairflip-40", "longtail-10", "longtail-100"):
        assert _lowest_ece(published, "mnist1d", condition) == LS, condition
    for condition in ("pairflip-40", "longtail-100"):
        assert _lowest_ece(published, "digits", condition) == FOCAL, condition
        focal, ls = _ece(published, "digits", condition, FOCAL), _ece(published, "digits", condition, LS)
        pair = f"{focal:.3f} vs {ls:.3f}"
        assert pair in choosing, pair
    assert (f"lowest ECE on MNIST-1D ({_ece(published, 'mnist1d', 'pairflip-40', LS):.3f}; focal "
            f"{_ece(published, 'mnist1d', 'pairflip-40', FOCAL):.3f}), not on digits "
            f"({_ece(published, 'digits', 'pairflip-40', LS):.3f}; focal "
            f"{_ece(published, 'digits', 'pairflip-40', FOCAL):.3f})") in conclusion
    assert "best calibrated loss of the study on MNIST-1D" in choosing
    assert "best calibrated loss of the study (" not in choosing  # the unqualified claim


def test_label_smoothing_clean_ece_ratios(published):
    ratios = [_ece(published, d, "clean", LS) / _ece(published, d, "clean", "cross entropy")
              for d in ("mnist1d", "digits")]
    assert f"clean ECE {ratios[0]:.1f} and {ratios[1]:.1f} times cross entropy's" in _text("choosing.md")


def test_page_says_where_its_cpu_time_comes_from(tmp_path):
    study = _module("study")
    report = json.loads((DOCS / "results.json").read_text())
    note = study._cpu_note(report)
    if "cpu_seconds_source" in report:  # hand-read, not measured: the page must say so
        assert "not measured by the script" in note and report["cpu_seconds_source"] in note
    measured = {**report, "cpu_seconds": 600.0}
    measured.pop("cpu_seconds_source", None)
    assert "10.0 CPU-minutes" in study._cpu_note(measured)
    assert "not measured" not in study._cpu_note(measured)
