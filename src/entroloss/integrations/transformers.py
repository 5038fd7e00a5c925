"""Hugging Face Transformers: a ``*ForCausalLM`` whose loss is an entroloss linear-head loss
(``docs/integrations-transformers.md``).

    from entroloss.integrations.transformers import patch, unpatch
    patch(model, loss="min_ent", entropy_weight=0.1)
    model(input_ids, labels=labels).loss        # no (batch, length, vocab) logits built

How, so that no model's forward is copied (a copy breaks with the next release): the
model's own forward runs with ``labels`` withheld, and a pre-hook on its output embedding
(``get_output_embeddings()``) takes the hidden states the head is handed and hands the
head an empty slice of them instead, so the head forms logits for no position. The loss is
then the linear-head loss of those hidden states and the head's weight and bias, with the
labels shifted as Transformers shifts them. Whatever the model does before its head
(norms, slicing, adapters) is thus its own; what it does after (Gemma's soft cap) is read
from the config, and ``patch`` checks on a two-token input that the model's logits are
exactly that, so a model that transforms them otherwise is refused rather than trained on
another loss.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, cast

import torch
import torch.nn.functional as F

import entroloss
from entroloss import _losses

__all__ = ["patch", "unpatch", "is_patched", "loss_names", "ModelLossMixin"]

IGNORE = -100  # Transformers' label for "no loss here"
_STATE = "_entroloss_patch"
# what the patch itself sets on the loss, so not options a caller may pass
_OWNED = ("bias", "ignore_index", "reduction", "softcap", "denominator")


@dataclasses.dataclass
class _Patch:
    loss: str
    function: Any
    options: dict
    head: torch.nn.Module
    softcap: float | None
    return_logits: bool
    previous: Any  # an instance-level forward that was there before (else None)
    guard: Any = None  # the backbone's pre-hook handle (see _guard)
    inside: int = 0  # > 0 while the patched forward runs the model


def loss_names() -> tuple[str, ...]:
    """The names ``patch`` accepts: every loss of the registry."""
    return tuple(d.name for d in _losses.LOSSES)


def _loss_function(name: Any) -> Any:
    names = loss_names()
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown loss {name!r}; the losses are {', '.join(names)}")
    function = getattr(entroloss, f"linear_{name}", None)
    if function is None:
        raise ValueError(f"loss {name!r} has no linear-head form entroloss.linear_{name}")
    return function


def _head(model: Any) -> torch.nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    if not isinstance(model, torch.nn.Module) or get is None:
        raise TypeError(f"model must be a Transformers *ForCausalLM (a torch.nn.Module with "
                        f"get_output_embeddings()), got {type(model).__name__}")
    head = get()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding "
                         f"(get_output_embeddings() is None): patch a *ForCausalLM, not a "
                         f"base model")
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"the output embedding of {type(model).__name__} must be a linear "
                         f"layer with a (vocab, hidden) weight, got {type(head).__name__}")
    return head


def _softcap(model: Any) -> float | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    return None if cap is None else float(cap)


def _check_options(function: Any, name: str, options: dict, chunk_size: Any) -> None:
    """Every option is checked now, on a two-row problem, not at the first step."""
    owned = sorted(set(options) & set(_OWNED))
    if owned:
        raise TypeError(f"patch() sets {', '.join(owned)} itself (the head's bias, -100, the "
                        f"model's soft cap, Transformers' reduction and num_items_in_batch); remove "
                        f"{', '.join(map(repr, owned))}")
    function(torch.zeros(2, 1), torch.zeros(3, 1), torch.tensor([0, 1]),
             chunk_size=chunk_size, **options)


def _self_check(model: Any, head: torch.nn.Module, softcap: float | None) -> None:
    """The model's logits must be ``softcap(head(h))`` for the hidden states ``h`` its head
    is handed: else the patched loss would not be the loss of its logits."""
    seen: list = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = _original(model)(input_ids=torch.tensor([[0, 1]], device=device)).logits
    finally:
        handle.remove()
        model.train(training)
    if len(seen) != 1:
        raise ValueError(f"{type(model).__name__}'s forward called its output embedding "
                         f"{len(seen)} times, not once; its loss cannot be patched")
    with torch.no_grad():
        expected = head(seen[0])
        if softcap is not None:
            expected = softcap * torch.tanh(expected / softcap)
    if logits is None or logits.shape != expected.shape or not torch.allclose(
            logits.float(), expected.float(), rtol=1e-3,
            atol=1e-4 * float(expected.abs().max()) + 1e-6):
        raise ValueError(f"{type(model).__name__}'s logits are not its output embedding's "
                         f"output (soft-capped by final_logit_softcapping where set): it "
                         f"transforms them in a way patch() does not know, so its loss "
                         f"cannot be patched")


def _original(model: Any) -> Any:
    state = model.__dict__.get(_STATE)
    if state is not None and state.previous is not None:
        return state.previous
    return type(model).forward.__get__(model)


def patch(model: Any, loss: str = "cross_entropy", *, return_logits: bool = False,
          chunk_size: int | None = None, check: bool = True, **options: Any) -> Any:
    """Make ``model(..., labels=labels)`` compute its loss with ``entroloss.linear_<loss>``.

    Args:
      model: a Transformers ``*ForCausalLM`` (Llama, Qwen2, Mistral, Gemma 2 and 3,
        GPT-2, ...): its ``get_output_embeddings()`` is the head.
      loss: a loss of the registry (`loss_names()`): ``"cross_entropy"`` gives the
        model's own loss, ``"min_ent"``, ...
      return_logits: also build the logits when labels are given (for metrics); by
        default ``output.logits`` is None then. Per call: ``model(..., return_logits=True)``.
      chunk_size: rows of logits formed at a time (`linear_cross_entropy`).
      check: run the model once on two tokens, now, to check that its logits are its
        head's output (with Gemma's soft cap): a model that changes them otherwise is
        refused.
      **options: the loss's own options (``entropy_weight=``, ``gamma=``,
        ``label_smoothing=``, ...). ``bias``, ``ignore_index``, ``reduction`` and
        ``softcap`` are the model's.

    Calls without ``labels`` (generation) run the model unchanged. With labels, the labels
    are shifted as Transformers does (or ``shift_labels=`` is used), ``-100`` (or
    ``ignore_index=``) is ignored, and ``num_items_in_batch=`` (the Trainer's, under
    gradient accumulation: the step's count of labels, over its micro-batches and ranks) is
    the loss's ``denominator=``: the micro-batches' losses then add up to the step's mean.
    Returns ``model``.
    """
    function = _loss_function(loss)
    head = _head(model)
    if return_logits is not True and return_logits is not False:
        raise TypeError(f"return_logits must be True or False, got {return_logits!r}")
    _check_options(function, loss, options, chunk_size)
    if is_patched(model):
        unpatch(model)
    softcap = _softcap(model)
    if check:
        _self_check(model, head, softcap)
    state = _Patch(loss, function, dict(options, chunk_size=chunk_size), head, softcap,
                   return_logits, model.__dict__.get("forward"))

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _forward(self, args, kwargs)

    # the Trainer reads the forward's signature (which columns to keep, whether it takes
    # num_items_in_batch): it must see the model's own
    forward.__signature__ = inspect.signature(type(model).forward)  # type: ignore[attr-defined]
    forward.__doc__ = type(model).forward.__doc__
    model.__dict__[_STATE] = state
    # bound to the model, so that copy.deepcopy(model) carries a forward of the copy
    model.forward = types.MethodType(forward, model)
    backbone = getattr(model, "base_model", model)
    if backbone is not model:
        state.guard = backbone.register_forward_pre_hook(_guard(model, forward))
    return model


def _guard(model: Any, ours: Any) -> Any:
    """A wrapper put around the patched forward later that runs the backbone itself (TRL's
    fused LM head, ``add_fused_lm_head``, which SFTTrainer installs) would train on its own
    loss, not the patched one: refuse that rather than fall back silently."""

    def check(module: Any, args: tuple) -> None:
        state = model.__dict__.get(_STATE)
        if state is None or state.inside or not torch.is_grad_enabled():
            return
        current = model.__dict__.get("forward")
        if getattr(current, "__func__", None) is not ours:
            raise RuntimeError(
                f"the forward of this patched {type(model).__name__} was wrapped after patch() "
                f"by {getattr(current, '__qualname__', current)!r}, which runs the backbone "
                f"itself and computes its own loss (TRL's SFTTrainer does, with its fused LM "
                f"head): the entroloss loss would not be used. With TRL, subclass the trainer "
                f"with entroloss.integrations.transformers.ModelLossMixin first, so that it "
                f"takes the model's loss")

    return check


def unpatch(model: Any) -> Any:
    """Undo `patch`: the model's own forward and loss again. Returns ``model``."""
    state = model.__dict__.pop(_STATE, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} is not patched by entroloss")
    if state.guard is not None:
        state.guard.remove()
    if state.previous is not None:
        model.forward = state.previous
    else:
        del model.forward
    return model


def is_patched(model: Any) -> bool:
    return _STATE in getattr(model, "__dict__", {})


def _forward(model: Any, args: tuple, kwargs: dict) -> Any:
    state = model.__dict__[_STATE]
    original = _original(model)
    bound = inspect.signature(original).bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    extra = {}
    for name, parameter in inspect.signature(original).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            extra = dict(arguments.pop(name, {}))
    labels = arguments.pop("labels", None)
    return_logits = extra.pop("return_logits", state.return_logits)
    if extra.get("fused_lm_head"):
        raise RuntimeError("fused_lm_head=True (TRL's fused LM head) computes TRL's own loss, "
                           "not the patched one: subclass the trainer with "
                           "entroloss.integrations.transformers.ModelLossMixin first")
    if labels is None:
        state.inside += 1
        try:
            return original(**arguments, **extra)
        finally:
            state.inside -= 1
    num_items = extra.pop("num_items_in_batch", None)
    shift_labels = extra.pop("shift_labels", None)
    ignore_index = extra.pop("ignore_index", IGNORE)
    head = model.get_output_embeddings()
    if head is not state.head:
        raise RuntimeError(f"the output embedding of this patched {type(model).__name__} was "
                           f"replaced after patch() ({type(head).__name__}); call unpatch() "
                           f"and patch() again so that the loss uses the new head")

    seen: list = []

    def take_hidden(module: Any, args: tuple, kwargs: dict) -> Any:
        hidden = args[0] if args else kwargs["input"]
        seen.append(hidden)
        if return_logits:
            return None
        # the head is called on no position at all: no logits exist
        empty = hidden[..., :0, :] if hidden.ndim > 1 else hidden[:0]
        return ((empty, *args[1:]), kwargs) if args else (args, {**kwargs, "input": empty})

    handle = head.register_forward_pre_hook(take_hidden, with_kwargs=True)
    state.inside += 1
    try:
        output = original(**arguments, **extra)
    finally:
        state.inside -= 1
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"{type(model).__name__}'s forward called its output embedding "
                           f"{len(seen)} times, not once; the patched loss cannot be formed")
    hidden = seen[0]
    if shift_labels is None:
        # pad then shift, as Transformers: the last position predicts nothing
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    if isinstance(num_items, torch.Tensor):  # the Trainer's count: on its own device, 0-d or (1,)
        num_items = num_items.to(hidden.device).reshape(())
    value = state.function(hidden, head.weight, shift_labels, bias=head.bias,
                           ignore_index=ignore_index, softcap=state.softcap,
                           denominator=num_items, **state.options)
    value = value.float()  # Transformers' loss is float32 whatever the model's dtype
    aux = getattr(output, "aux_loss", None)
    if aux is not None:  # mixture-of-experts: the model adds its balancing loss to the loss
        coefficient = getattr(model, "router_aux_loss_coef", None)
        if coefficient is None:
            raise RuntimeError(f"{type(model).__name__} returned an aux_loss but has no "
                               f"router_aux_loss_coef; the patched loss cannot add it")
        value = value + coefficient * aux.to(value.device)
    if isinstance(output, tuple):
        return (value, *output)
    fields = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    fields["loss"] = value
    if not return_logits:
        fields["logits"] = None
    return type(output)(**fields)


class ModelLossMixin:
    """Put first in a trainer's bases (``class SFT(ModelLossMixin, trl.SFTTrainer)``) so
    that its loss is the model's own, ``Trainer.compute_loss``: ``model(**inputs).loss``
    with ``num_items_in_batch``, which `patch` makes the entroloss loss. TRL's SFTTrainer
    otherwise computes the loss itself from its fused LM head (and its entropy and
    token-accuracy metrics with it, which are then not logged)."""

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        from transformers import Trainer

        trainer = cast(Trainer, self)  # a mixin: self is the trainer it is a base of
        return Trainer.compute_loss(trainer, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
