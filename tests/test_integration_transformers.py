"""Hugging Face Transformers (issue 22 item 1): a patched ``*ForCausalLM`` computes its
loss with a linear-head loss, equal to the unpatched model's with cross entropy (values
and gradients), for Llama, Qwen2, Mistral, Gemma 2 and 3 (soft cap), GPT-2; Trainer and
TRL's SFTTrainer train it; each misuse is refused. Tiny models from configs, nothing
downloaded."""

from __future__ import annotations

import math

import pytest

import entroloss as el

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from entroloss import _losses  # noqa: E402
from entroloss.integrations.transformers import (  # noqa: E402
    ModelLossMixin, loss_names, patch, unpatch)

VOCAB = 64
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


def _model(kind: str, tied: bool = False):
    t = transformers
    configs = {
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(**SMALL, tie_word_embeddings=tied)),
        "qwen2": lambda: t.Qwen2ForCausalLM(t.Qwen2Config(**SMALL, tie_word_embeddings=tied)),
        "mistral": lambda: t.MistralForCausalLM(t.MistralConfig(**SMALL, head_dim=8)),
        # a cap small enough to change the loss: a patch that skipped it would be caught
        "gemma2": lambda: t.Gemma2ForCausalLM(t.Gemma2Config(
            **SMALL, head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8)),
        "gemma3": lambda: t.Gemma3ForCausalLM(t.Gemma3TextConfig(
            **SMALL, head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8)),
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    }
    torch.manual_seed(0)
    return configs[kind]().eval()


def _batch():
    """Three rows of 20 tokens: right padding, a prompt (test_lm_example's batch)."""
    from tests.test_lm_example import _batch as batch

    return batch(VOCAB)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind, tied", [("llama", False), ("llama", True), ("qwen2", True),
                                        ("mistral", False), ("gemma2", False),
                                        ("gemma3", False), ("gpt2", True)])
def test_cross_entropy_patch_is_the_models_own_loss(kind, tied):
    model = _model(kind, tied)
    input_ids, mask, labels = _batch()
    theirs = model(input_ids, attention_mask=mask, labels=labels)
    expected = _grads(model, theirs.loss)
    head = model.get_output_embeddings().weight
    patch(model, "cross_entropy")
    ours = model(input_ids, attention_mask=mask, labels=labels)
    assert ours.logits is None  # not built
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5
    got = _grads(model, ours.loss)
    assert got.keys() == expected.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert model.get_output_embeddings().weight is head  # the same Parameter, tied or not
    if tied:
        assert model.get_input_embeddings().weight is head
    # without labels (generation) the model is unchanged, logits and all
    generated = model(input_ids).logits
    torch.testing.assert_close(generated, unpatch(model)(input_ids).logits, rtol=0, atol=0)
    assert "forward" not in model.__dict__
    assert model(input_ids, attention_mask=mask, labels=labels).loss.item() == theirs.loss.item()


def test_any_loss_with_logits_on_request_and_shift_labels():
    model = _model("gemma2")
    input_ids, mask, labels = _batch()
    logits = model(input_ids, attention_mask=mask).logits  # soft-capped by the model
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    expected = el.min_ent(logits, shifted, entropy_weight=0.2, ignore_index=-100)
    patch(model, "min_ent", entropy_weight=0.2, return_logits=True, chunk_size=7)
    out = model(input_ids, attention_mask=mask, labels=labels)
    assert abs(out.loss.item() - expected.item()) < 1e-5
    torch.testing.assert_close(out.logits, logits)
    pre = model(input_ids, attention_mask=mask, labels=labels[:, :0], shift_labels=shifted,
                return_logits=False)
    assert pre.logits is None and abs(pre.loss.item() - expected.item()) < 1e-5


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_gradient_accumulation_with_num_items_in_batch_is_one_big_batch(loss):
    model = patch(_model("llama"), loss)
    input_ids, mask, labels = _batch()
    big = _grads(model, model(input_ids, attention_mask=mask, labels=labels).loss)
    count = torch.tensor(int((labels[:, 1:] != -100).sum()))
    model.zero_grad(set_to_none=True)
    for rows in (slice(0, 1), slice(1, 3)):  # uneven micro-batches
        model(input_ids[rows], attention_mask=mask[rows], labels=labels[rows],
              num_items_in_batch=count).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, big[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", [d.name for d in _losses.LOSSES])
def test_every_loss_of_the_registry_is_accepted(name):
    assert loss_names() == tuple(d.name for d in _losses.LOSSES)
    model = patch(_model("llama"), name)
    input_ids, mask, labels = _batch()
    assert torch.isfinite(model(input_ids, labels=labels).loss)


def test_bad_input_is_refused_clearly():
    model = _model("llama")
    with pytest.raises(ValueError, match="unknown loss 'ce'; the losses are cross_entropy, min_ent"):
        patch(model, "ce")
    with pytest.raises(ValueError, match="no output embedding"):
        patch(model.model)
    with pytest.raises(TypeError, match="a torch.nn.Module with get_output_embeddings"):
        patch(object())
    with pytest.raises(TypeError, match="sets ignore_index, reduction itself"):
        patch(model, reduction="sum", ignore_index=0)
    with pytest.raises(ValueError, match="gamma"):
        patch(model, "focal", gamma=-1.0)  # checked now, not at the first step
    with pytest.raises(ValueError, match="not patched"):
        unpatch(model)

    class Scaled(type(model)):  # logits changed after the head: not the head's output
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    scaled = Scaled(model.config)
    with pytest.raises(ValueError, match="logits are not its output embedding's output"):
        patch(scaled)

    patch(model)
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=False)
    input_ids, _, labels = _batch()
    with pytest.raises(RuntimeError, match="output embedding of this patched .* was replaced"):
        model(input_ids, labels=labels)
    with pytest.raises(RuntimeError, match="fused_lm_head=True"):
        model(input_ids, labels=labels, fused_lm_head=True)


def _tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        pad_token="t1", eos_token="t2")


def _dataset():
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 12, (16,), generator=g).tolist()
    return datasets.Dataset.from_dict(
        {"input_ids": [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]})


def test_trainer_trains_on_the_patched_loss(tmp_path):
    pytest.importorskip("accelerate")
    model = patch(_model("llama").train(), "min_ent", entropy_weight=0.1)
    collator = transformers.DataCollatorForLanguageModeling(_tokenizer(), mlm=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, learning_rate=1e-3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(),
                                   data_collator=collator)
    assert trainer.model_accepts_loss_kwargs  # so it passes num_items_in_batch
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    # MIN-ENT at the start: (1 + 0.1) ln V, where cross entropy alone would be ln V
    assert losses[0] == pytest.approx(1.1 * math.log(VOCAB), abs=0.1)


def test_trl_sft_trainer_trains_on_the_patched_loss_and_is_never_bypassed(tmp_path):
    trl = pytest.importorskip("trl")
    model = patch(_model("llama").train(), "min_ent", entropy_weight=0.1)
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                         gradient_accumulation_steps=2, logging_steps=1, report_to=[],
                         save_strategy="no", use_cpu=True, learning_rate=1e-3)

    class SFT(ModelLossMixin, trl.SFTTrainer):
        pass

    data, tokenizer = _dataset(), _tokenizer()
    trainer = SFT(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[0] == pytest.approx(1.1 * math.log(VOCAB), abs=0.1)
    # the stock SFTTrainer's fused LM head would compute its own loss: refused, not ignored
    stock = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(RuntimeError, match="wrapped after patch"):
        stock.train()
