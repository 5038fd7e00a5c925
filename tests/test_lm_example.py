"""The language-model example (benchmarks/lm/): its quick run trains a BPE of 8192 tokens
at test time and a small causal transformer twice, and the two losses agree step by step;
the Hugging Face recipe's loss is Transformers' own, value and gradients."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
LM = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "lm"
VOCAB = 8192


def _recipe():
    spec = importlib.util.spec_from_file_location("hf_recipe", LM / "hf_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the peak memory is read from /proc/self/status")
    out = tmp_path_factory.mktemp("lm")
    run = subprocess.run([sys.executable, str(LM / "train_lm.py"), "--quick", "--cache",
                          str(out / "cache"), "--out", str(out)],
                         capture_output=True, text=True, cwd=out, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads((out / "lm_example.json").read_text())


def test_quick_run_trains_its_own_bpe_of_8192_tokens(quick):
    out, report = quick
    assert report["options"]["vocab"] == VOCAB and report["data"]["vocab_size"] == VOCAB
    assert len(list((out / "cache").glob(f"bpe-{VOCAB}-*.json"))) == 1
    # ~4 bytes a token on Python source; a byte-level tokenizer that failed to merge gives 1
    assert report["data"]["train_bytes"] / report["data"]["train_tokens"] > 3


def test_quick_run_starts_from_the_uniform_prediction(quick):
    """Weights of std 0.02 give near-zero logits: cross entropy and entropy both ln V."""
    _, report = quick
    weight = report["options"]["entropy_weight"]
    for kind in ("linear", "naive", "control"):
        first = report["summary"][kind]["first_loss"]
        assert first == pytest.approx((1 + weight) * math.log(VOCAB), abs=0.05)
        ce = report["summary"][kind]["held_out_cross_entropy"]
        assert ce == pytest.approx(math.log(VOCAB), abs=0.2)
        assert report["summary"][kind]["held_out_perplexity"] == pytest.approx(math.exp(ce))


def test_the_two_losses_agree_step_by_step(quick):
    _, report = quick
    steps, agreement = report["steps"], report["agreement"]
    assert len(steps) == report["options"]["steps"]
    for step in steps:
        assert step["linear"] == pytest.approx(step["naive"], rel=1e-5, abs=1e-5)
    linear = agreement["linear"]
    assert linear["max_abs_loss_difference"] == max(abs(s["linear"] - s["naive"]) for s in steps)
    assert linear["final_parameters_max_abs_difference"] < 1e-4
    start = agreement["gradients_at_start"]
    assert 0 < start["max_abs_gradient"] and start["max_abs_difference"] < 1e-5 * start["max_abs_gradient"]
    held_out = [report["summary"][k]["held_out_cross_entropy"] for k in ("linear", "naive")]
    assert held_out[0] == pytest.approx(held_out[1], abs=1e-4)


def test_the_control_starts_one_ulp_away(quick):
    """The control is the full-logits run from a start one float32 ulp away: apart from
    it, but by rounding only."""
    _, report = quick
    control = report["agreement"]["control"]
    assert 0 < control["final_parameters_max_abs_difference"] < 1e-4
    for step in report["steps"]:
        assert step["control"] == pytest.approx(step["naive"], rel=1e-5, abs=1e-5)


def test_the_linear_head_loss_holds_less_than_the_logits(quick):
    """The naive loss holds the logits and their gradient at least; the linear head a few
    chunks of 32 rows."""
    out, report = quick
    o = report["options"]
    logits_bytes = o["batch"] * o["seq"] * VOCAB * 4
    linear, naive = (report["summary"][k]["peak_head_bytes"] for k in ("linear", "naive"))
    assert naive >= 2 * logits_bytes
    assert linear < naive / 2
    assert f"{naive / 2**20:.1f}" in (out / "lm_example.md").read_text()


# --- the Hugging Face recipe: a peer check against Transformers' own loss --------------------

def _batch(vocab: int):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, vocab, (3, 20), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 14:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[1, :6] = -100  # a prompt
    return input_ids, attention_mask, labels


def _gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True])
def test_recipe_is_transformers_causal_lm_loss(tied):
    pytest.importorskip("transformers")
    recipe = _recipe()
    model = recipe.small_llama(1024, tied=tied)
    input_ids, attention_mask, labels = _batch(1024)
    count = int((labels[:, 1:] != -100).sum())
    for extra in ({}, {"num_items_in_batch": torch.tensor(count + 7)}):
        theirs = model(input_ids, attention_mask=attention_mask, labels=labels, **extra).loss
        expected = _gradients(model, theirs)
        ours = recipe.causal_lm_loss(model, input_ids, labels, attention_mask=attention_mask,
                                     **extra)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        for name, grad in _gradients(model, ours).items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_recipe_refuses_a_reduction_with_num_items_in_batch():
    pytest.importorskip("transformers")
    recipe = _recipe()
    model = recipe.small_llama(64)
    input_ids, _, labels = _batch(64)
    with pytest.raises(ValueError, match="reduction or num_items_in_batch"):
        recipe.causal_lm_loss(model, input_ids, labels, num_items_in_batch=10, reduction="mean")
