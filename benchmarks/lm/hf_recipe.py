"""The linear-head losses in a Hugging Face Transformers causal LM: the loss of
``model(input_ids, labels=labels)`` without the ``(batch, length, vocab)`` logits.

    python benchmarks/lm/hf_recipe.py        # a small random Llama: no download

``causal_lm_loss`` calls the base model (``model.model``) for the last hidden states,
shifts the labels as Transformers does (position t predicts token t + 1; -100 is
ignored, and so is the last position) and hands the hidden states and
``model.lm_head.weight`` to a linear-head loss. With ``el.linear_cross_entropy`` it is
the loss Transformers computes itself (``tests/test_lm_example.py`` holds it to that,
gradients included); any other linear-head loss takes its place with its options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import entroloss as el

IGNORE = -100  # Transformers' label for "no loss here" (padding, prompts)


def causal_lm_loss(model, input_ids, labels, *, attention_mask=None,
                   loss=el.linear_cross_entropy, num_items_in_batch=None, **options):
    """The next-token ``loss`` of a Transformers ``*ForCausalLM`` (``model.model`` the
    base, ``model.lm_head`` the head). ``num_items_in_batch``, as the Trainer passes it
    under gradient accumulation: the sum over the batch divided by that count, as
    Transformers' own loss does."""
    if num_items_in_batch is not None:
        if "reduction" in options:
            raise ValueError("pass reduction or num_items_in_batch, not both: "
                             "num_items_in_batch means the sum divided by it")
        options = {**options, "reduction": "sum"}
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
    # pad then shift, not hidden[:, :-1]: no copy of the hidden states, and the last
    # position is an ignored row, left out of the matmuls
    shifted = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    head = model.lm_head
    value = loss(hidden, head.weight, shifted, bias=head.bias, ignore_index=IGNORE, **options)
    return value if num_items_in_batch is None else value / num_items_in_batch


def small_llama(vocab_size: int = 8192, *, tied: bool = False, seed: int = 0):
    """A two-layer Llama of random weights (nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def main() -> None:
    model = small_llama()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 64), generator=generator)
    labels = input_ids.clone()
    labels[:, :16] = IGNORE  # a prompt that is not trained on
    theirs = model(input_ids, labels=labels).loss
    ours = causal_lm_loss(model, input_ids, labels)
    print(f"Transformers' loss {theirs.item():.6f}, el.linear_cross_entropy {ours.item():.6f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(5):
        value = causal_lm_loss(model, input_ids, labels, loss=el.linear_min_ent,
                               entropy_weight=0.1)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        print(f"step {step}: linear-head MIN-ENT {value.item():.4f}")


if __name__ == "__main__":
    main()
