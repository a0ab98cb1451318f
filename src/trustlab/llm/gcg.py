"""Greedy Coordinate Gradient (GCG): an adversarial suffix that makes a causal LM begin its answer with a target.

For a prompt ``x = [before; suffix; after]`` (``before`` ends with the user's goal, ``after`` is the end of the
user turn and the assistant header) and a target ``y`` ("Sure, here is ..."), the loss is the cross-entropy of
``y`` given ``x``, ``L(x) = -log p(y | x)``, averaged over the target's tokens. Each step of Algorithm 1:

1. the gradient of ``L`` with respect to the one-hot encoding ``e_{x_i}`` of every suffix token ``i``, through
   the model's input-embedding matrix (``torch.autograd.grad``; the model's weights are not touched);
2. for each position ``i`` the ``topk`` tokens with the most negative gradient, ``X_i``;
3. ``batch_size`` (B) candidates, each the suffix with one uniformly chosen position ``i`` set to a uniformly
   chosen token of ``X_i`` (drawn from the ``torch.Generator``);
4. the exact loss of every candidate (forward passes in chunks of ``eval_batch_size``), and the suffix becomes the
   best candidate (as in the paper, even if it is worse than the current suffix; the best suffix ever seen is
   what is returned).

With ``prefix_cache`` the key/value states of each goal's ``before`` (system prompt, template and goal, which no
candidate changes) are computed once and every pass runs on ``[suffix; after; target]`` only (as nanoGCG does);
the losses are those of the full pass up to floating-point rounding.

Success for a goal is that the greedy continuation of the prompt starts with the target's tokens: every
teacher-forced argmax over the target positions equals the target token (then greedy decoding emits exactly the
target), read off the same forward pass that computes the loss. The attack stops early when every active goal
succeeds.

Multi-prompt (universal) mode, Algorithm 2: one suffix for several goals, the loss summed over the goals; with
``progressive=True`` the goals are added one at a time, the next once the suffix succeeds on all current ones.

Reference:
    Zou, Wang, Carlini, Nasr, Kolter & Fredrikson, "Universal and Transferable Adversarial Attacks on Aligned
    Language Models", 2023, arXiv:2307.15043 (Algorithm 1, GCG; Algorithm 2, universal prompt optimization).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from trustlab.validation import check_positive_int

__all__ = ["GCGConfig", "GCGGoal", "GCGResult", "gcg", "gcg_attack", "chat_goal", "ascii_token_mask",
           "retokenizes_to_itself", "target_loss", "prefix_states", "DEFAULT_SUFFIX"]

log = logging.getLogger(__name__)
DEFAULT_SUFFIX = " ".join(["!"] * 20)  # the paper's initialisation: 20 "!" tokens


@dataclass(frozen=True)
class GCGConfig:
    """GCG's hyperparameters (the paper's T, k and B).

    Raises:
        ValueError, TypeError: a count below 1 (named).
    """

    steps: int = 500
    topk: int = 256
    batch_size: int = 512
    eval_batch_size: int | None = None  # candidates per forward pass; None: all B at once
    early_stop: bool = True
    progressive: bool = False
    prefix_cache: bool = False  # reuse each goal's key/value states of ``before`` (transformers caches only)

    def __post_init__(self) -> None:
        check_positive_int(self.steps, "steps", minimum=0)
        check_positive_int(self.topk, "topk")
        check_positive_int(self.batch_size, "batch_size")
        if self.eval_batch_size is not None:
            check_positive_int(self.eval_batch_size, "eval_batch_size")


@dataclass(frozen=True)
class GCGGoal:
    """One goal's token ids around the suffix: ``before`` (template and goal), ``after`` (end of the user turn and
    the assistant header) and ``target``, each 1-D ``long``."""

    before: Tensor
    after: Tensor
    target: Tensor

    def __post_init__(self) -> None:
        for name in ("before", "after", "target"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype != torch.long:
                raise TypeError(f"{name} must be a 1-D long tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if len(self.target) == 0:
            raise ValueError("target must have at least one token")


@dataclass(frozen=True)
class GCGResult:
    """The best suffix found and the trace of the attack.

    Attributes:
        suffix_ids: the best suffix (lowest summed loss over all goals).
        loss: its summed loss; losses and success: per goal.
        steps: the steps run (fewer than configured after an early stop).
        records: one row per step (0 is the initial suffix): ``step, loss, losses, success, n_active,
            n_candidates, seconds, suffix_ids``.
    """

    suffix_ids: Tensor
    loss: float
    losses: tuple[float, ...]
    success: tuple[bool, ...]
    steps: int
    records: list[dict[str, Any]] = field(repr=False)


Prefix = list[tuple[Tensor, Tensor]]  # per layer, the key and value states of a goal's ``before`` (1, h, T, d)


def _ids(goal: GCGGoal, suffixes: Tensor, *, before: bool = True) -> tuple[Tensor, slice]:
    """``[before; suffix; after; target]`` for each suffix row (without ``before`` if not ``before``), and the
    target's slice. (B, L) -> (B, T)."""
    b = suffixes.shape[0]
    parts = [goal.before.expand(b, -1)] if before else []
    parts += [suffixes, goal.after.expand(b, -1), goal.target.expand(b, -1)]
    ids = torch.cat([p.to(suffixes.device) for p in parts], dim=1)
    start = ids.shape[1] - len(goal.target)
    return ids, slice(start, ids.shape[1])


def _target_stats(logits: Tensor, target: Tensor, where: slice) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the target tokens and whether every argmax matches, per row. (B, T, V) -> (B,)."""
    pred = logits[:, where.start - 1:where.stop - 1].float()  # the logits that predict the target tokens
    tgt = target.to(logits.device).expand(pred.shape[0], -1)
    loss = F.cross_entropy(pred.transpose(1, 2), tgt, reduction="none").mean(1)
    return loss, (pred.argmax(-1) == tgt).all(1)


@torch.no_grad()
def prefix_states(model: torch.nn.Module, goal: GCGGoal) -> Prefix:
    """The key/value states of ``goal.before`` (one forward pass), for :func:`target_loss`'s ``prefix``.

    Raises:
        TypeError: the model does not return a transformers cache with ``layers`` (keys and values per layer).
    """
    device = model.get_input_embeddings().weight.device
    cache = model(input_ids=goal.before[None].to(device), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") for layer in layers):
        raise TypeError(f"prefix_cache needs a transformers cache with layers, got {type(cache).__name__}")
    return [(layer.keys, layer.values) for layer in layers]


def _cache(prefix: Prefix, b: int) -> Any:
    """A fresh transformers ``DynamicCache`` holding ``prefix`` for ``b`` rows (the model appends to its copy)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix])


def _logits(model: torch.nn.Module, prefix: Prefix | None, **inputs: Tensor) -> Tensor:
    """The model's logits on ``input_ids`` or ``inputs_embeds``, after the cached ``prefix`` when given."""
    if prefix is None:
        return model(**inputs).logits
    (x,) = inputs.values()
    return model(**inputs, past_key_values=_cache(prefix, x.shape[0]), use_cache=True).logits


@torch.no_grad()
def target_loss(model: torch.nn.Module, goal: GCGGoal, suffixes: Tensor, *, eval_batch_size: int | None = None,
                prefix: Prefix | None = None) -> tuple[Tensor, Tensor]:
    """``(loss, success)`` of each suffix row for one goal, in forward chunks of ``eval_batch_size``; with
    ``prefix`` (:func:`prefix_states` of the goal) only ``[suffix; after; target]`` is run. (B, L) -> (B,)."""
    ids, where = _ids(goal, suffixes, before=prefix is None)
    chunk = eval_batch_size or len(ids)
    out = [_target_stats(_logits(model, prefix, input_ids=ids[i:i + chunk]), goal.target, where)
           for i in range(0, len(ids), chunk)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def _token_gradients(model: torch.nn.Module, goals: Sequence[GCGGoal], suffix: Tensor,
                     prefixes: Sequence[Prefix | None] | None = None) -> Tensor:
    """The gradient of the summed loss with respect to the suffix's one-hot rows. (L,) -> (L, V)."""
    prefixes = [None] * len(goals) if prefixes is None else prefixes
    weight = model.get_input_embeddings().weight  # (V, d)
    one_hot = F.one_hot(suffix, weight.shape[0]).to(weight.dtype).requires_grad_(True)  # (L, V)
    total = 0.0
    for goal, prefix in zip(goals, prefixes):
        ids, where = _ids(goal, suffix[None], before=prefix is None)
        start = 0 if prefix is not None else len(goal.before)
        embeds = weight[ids[0]].clone()  # (T, d)
        embeds[start:start + len(suffix)] = one_hot @ weight
        logits = _logits(model, prefix, inputs_embeds=embeds[None])
        total = total + _target_stats(logits, goal.target, where)[0].sum()
    (grad,) = torch.autograd.grad(total, one_hot)
    return grad


def _candidates(suffix: Tensor, grad: Tensor, *, topk: int, batch_size: int, allowed: Tensor | None,
                generator: torch.Generator) -> Tensor:
    """B single-token substitutions, each at a uniform position with a uniform choice among its top-k. -> (B, L)."""
    if allowed is not None:
        grad = grad.masked_fill(~allowed.to(grad.device), float("inf"))
    top = (-grad).topk(min(topk, grad.shape[1]), dim=1).indices  # (L, k)
    pos = torch.randint(len(suffix), (batch_size,), generator=generator, device=generator.device).to(suffix.device)
    pick = torch.randint(top.shape[1], (batch_size,), generator=generator, device=generator.device).to(suffix.device)
    cand = suffix.expand(batch_size, -1).clone()
    cand[torch.arange(batch_size, device=suffix.device), pos] = top[pos, pick]
    return cand


def _evaluate(model: torch.nn.Module, goals: Sequence[GCGGoal], suffixes: Tensor, eval_batch_size: int | None,
              prefixes: Sequence[Prefix | None]) -> tuple[Tensor, Tensor]:
    """Per-goal losses and successes of each suffix row: (B, L) -> (G, B), (G, B)."""
    stats = [target_loss(model, g, suffixes, eval_batch_size=eval_batch_size, prefix=p)
             for g, p in zip(goals, prefixes)]
    return torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats])


def gcg(model: torch.nn.Module, goals: Sequence[GCGGoal], suffix_ids: Tensor, *, config: GCGConfig = GCGConfig(),
        generator: torch.Generator, allowed_tokens: Tensor | None = None,
        candidate_filter: Callable[[Tensor], Tensor] | None = None) -> GCGResult:
    """GCG (Algorithm 1; Algorithm 2 with several goals) on token ids.

    Args:
        model: a causal LM taking ``input_ids`` or ``inputs_embeds`` and returning ``.logits`` (any HF one).
        goals: one or more :class:`GCGGoal` sharing the suffix.
        suffix_ids: the initial suffix, 1-D long (not modified).
        config: steps, top-k, candidates per step, early stop, progressive goals.
        generator: draws the candidates (a ``torch.Generator``; its device may differ from the model's).
        allowed_tokens: a boolean mask over the vocabulary (V,) of tokens the suffix may use; None: all.
        candidate_filter: ``(B, L) -> (B,)`` bool, which candidates to keep (e.g. :func:`retokenizes_to_itself`).

    Returns:
        The best suffix and the per-step trace (:class:`GCGResult`).

    Shapes:
        suffix_ids (L,); allowed_tokens (V,).
    """
    if not goals:
        raise ValueError("goals must hold at least one GCGGoal")
    if not isinstance(suffix_ids, Tensor) or suffix_ids.dim() != 1 or len(suffix_ids) == 0:
        raise ValueError(f"suffix_ids must be a non-empty 1-D tensor, got {getattr(suffix_ids, 'shape', suffix_ids)}")
    device = model.get_input_embeddings().weight.device
    suffix = suffix_ids.detach().to(device=device, dtype=torch.long).clone()
    was_training = model.training
    model.eval()
    try:
        return _run(model, list(goals), suffix, config, generator, allowed_tokens, candidate_filter)
    finally:
        model.train(was_training)


def _run(model, goals, suffix, config, generator, allowed, keep) -> GCGResult:
    active = 1 if config.progressive else len(goals)
    prefixes = [prefix_states(model, g) if config.prefix_cache else None for g in goals]
    losses, success = (t[:, 0] for t in _evaluate(model, goals, suffix[None], config.eval_batch_size, prefixes))
    best = (float(losses.sum()), suffix, losses, success)
    records = [_record(0, losses, success, active, 0, 0.0, suffix)]
    step = 0
    for step in range(1, config.steps + 1):
        if config.early_stop and bool(success[:active].all()):
            if active == len(goals):
                step -= 1
                break
            active += 1  # Algorithm 2: the next goal joins once all current ones succeed
        t0 = time.perf_counter()
        grad = _token_gradients(model, goals[:active], suffix, prefixes[:active])
        cand = _candidates(suffix, grad, topk=config.topk, batch_size=config.batch_size, allowed=allowed,
                           generator=generator)
        if keep is not None:
            kept = cand[keep(cand).to(cand.device)]
            cand = kept if len(kept) else suffix[None]
        cand_losses, cand_success = _evaluate(model, goals, cand, config.eval_batch_size, prefixes)  # (G, B)
        b = int(cand_losses[:active].sum(0).argmin())
        suffix, losses, success = cand[b], cand_losses[:, b], cand_success[:, b]
        if float(losses.sum()) < best[0]:
            best = (float(losses.sum()), suffix, losses, success)
        records.append(_record(step, losses, success, active, len(cand), time.perf_counter() - t0, suffix))
        log.info("gcg step %d: loss %.4f, %d of %d goals succeed", step, float(losses.sum()), int(success.sum()),
                 len(goals))
    return GCGResult(best[1].cpu(), best[0], tuple(map(float, best[2])), tuple(map(bool, best[3])), step, records)


def _record(step: int, losses: Tensor, success: Tensor, active: int, n_candidates: int, seconds: float,
            suffix: Tensor) -> dict[str, Any]:
    return {"step": step, "loss": float(losses.sum()), "losses": [float(v) for v in losses],
            "success": [bool(v) for v in success], "n_active": active, "n_candidates": n_candidates,
            "seconds": seconds, "suffix_ids": suffix.tolist()}


SUFFIX_MARK = "\x00SUFFIX\x00"


def chat_goal(tokenizer: Any, goal: str, target: str, *, system_prompt: str | None = None) -> GCGGoal:
    """The :class:`GCGGoal` of ``goal`` + suffix as the user's message in the tokenizer's chat template.

    ``before`` ends with the goal's last character: the space between goal and suffix belongs to the suffix's
    tokens (:func:`gcg_attack` starts from the encoding of ``" " + suffix``), because a byte-level BPE tokenizer
    merges a space with the word after it, so a ``before`` ending in a lone space token would never be what the
    tokenizer makes of the finished prompt.

    Raises:
        ValueError: the tokenizer has no chat template, or the goal or target is empty.
    """
    if not goal or not target:
        raise ValueError(f"goal and target must be non-empty, got {goal!r} and {target!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": f"{goal}{SUFFIX_MARK}"}],
                                         tokenize=False, add_generation_prompt=True)
    before, after = text.split(SUFFIX_MARK)

    def encode(s: str) -> Tensor:
        return torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"], dtype=torch.long)

    return GCGGoal(encode(before), encode(after), encode(target))


def ascii_token_mask(tokenizer: Any) -> Tensor:
    """(V,) bool: tokens that decode to non-empty printable ASCII and are not special tokens (as llm-attacks)."""
    special = set(tokenizer.all_special_ids)
    vocab = len(tokenizer)
    ok = [i not in special and (s := tokenizer.decode([i])).strip() != "" and s.isascii() and s.isprintable()
          for i in range(vocab)]
    return torch.tensor(ok)


def retokenizes_to_itself(tokenizer: Any, goals: Sequence[GCGGoal] = ()) -> Callable[[Tensor], Tensor]:
    """A candidate filter: keep suffixes whose decoded text encodes back to the same ids (so the string found is
    the attack that was scored); with ``goals``, the whole prompt ``[before; suffix; after]`` of every goal must
    (a suffix can encode to itself alone and still merge with the goal's last characters)."""
    contexts = [(g.before.tolist(), g.after.tolist()) for g in goals] or [([], [])]

    def keep(cand: Tensor) -> Tensor:
        ids = [b + r + a for r in cand.tolist() for b, a in contexts]  # row-major: each candidate's contexts
        again = tokenizer(tokenizer.batch_decode(ids), add_special_tokens=False)["input_ids"]
        same = torch.tensor([e == i for e, i in zip(again, ids)], dtype=torch.bool)
        return same.view(len(cand), len(contexts)).all(dim=1)

    return keep


def gcg_attack(model: torch.nn.Module, tokenizer: Any, goals: Sequence[str], targets: Sequence[str], *,
               system_prompt: str | None = None, suffix: str = DEFAULT_SUFFIX, config: GCGConfig = GCGConfig(),
               generator: torch.Generator, ascii_only: bool = True) -> tuple[str, GCGResult]:
    """GCG on chat-formatted goals: ``(suffix text, result)``. The user message is ``goal + suffix text``.

    The attack starts from the tokens of ``" " + suffix`` (the space separating goal and suffix is the first
    token's), keeps only candidates whose prompts the tokenizer gives back token for token (printable-ASCII tokens
    when ``ascii_only``), and returns the decoded best suffix: ``goal + text`` is the message that was scored.

    Raises:
        ValueError: goals and targets of different lengths, an empty one, or a tokenizer without chat template.
    """
    if len(goals) != len(targets) or not goals:
        raise ValueError(f"need as many targets as goals (>= 1), got {len(goals)} goals and {len(targets)} targets")
    parts = [chat_goal(tokenizer, g, t, system_prompt=system_prompt) for g, t in zip(goals, targets)]
    init = torch.tensor(tokenizer(" " + suffix, add_special_tokens=False)["input_ids"], dtype=torch.long)
    allowed = ascii_token_mask(tokenizer) if ascii_only else None
    result = gcg(model, parts, init, config=config, generator=generator, allowed_tokens=allowed,
                 candidate_filter=retokenizes_to_itself(tokenizer, parts))
    return tokenizer.decode(result.suffix_ids.tolist()), result
