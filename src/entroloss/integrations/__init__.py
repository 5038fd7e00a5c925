"""entroloss in the frameworks users train with (``docs/integrations-*.md``).

- `entroloss.integrations.transformers`: ``patch(model, loss=...)`` makes a Hugging Face
  ``*ForCausalLM`` compute its loss with a linear-head loss, without the logits.
- `entroloss.keras` (a module of its own, ``from entroloss.keras import MinEntLoss``):
  ``keras.losses.Loss`` classes for
  every loss, on the jax and torch backends of Keras 3.

Each submodule imports its framework; this package imports nothing, so that
``import entroloss`` stays free of them.
"""
