"""benchmarks/lm/train_lm.py writes its results under a named folder, not the working
directory, and says plainly when the two runs' losses never differ (issue 25, item 4)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("torch")
LM = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "lm"


@pytest.fixture(scope="module")
def train_lm():
    sys.path.insert(0, str(LM))
    spec = importlib.util.spec_from_file_location("train_lm", LM / "train_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_out_is_not_the_working_directory(train_lm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = train_lm.options(["--quick"]).out
    assert out.is_absolute() and out.resolve() != tmp_path.resolve()
    assert train_lm.options(["--quick", "--out", "x"]).out == pathlib.Path("x")


def test_agreement_lines_say_never_rather_than_none(train_lm):
    run = {"max_abs_loss_difference": 0.0, "at_step": 0, "first_step_differing": None,
           "final_parameters_max_abs_difference": 0.0, "final_parameters_relative_difference": 0.0}
    agreement = {"gradients_at_start": {"max_abs_difference": 0.0, "max_abs_gradient": 1.0},
                 "max_abs_parameter": 1.0, "linear": run,
                 "control": {**run, "first_step_differing": 6}}
    text = "\n".join(train_lm._agreement_lines(agreement, 10))
    assert "None" not in text
    assert "the losses never differ" in text and "the losses first differ at step 6" in text
