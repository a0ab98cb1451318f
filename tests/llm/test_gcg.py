"""GCG (Zou et al. 2023) on a tiny random Llama built here (token ids, nothing downloads), and on SmolLM2-135M
(slow)."""

from __future__ import annotations

import pytest
import torch

from trustlab.llm.gcg import (GCGConfig, GCGGoal, _token_gradients, chat_goal, gcg, gcg_attack, retokenizes_to_itself,
                              target_loss)

pytest.importorskip("transformers")


def goal(before, after, target):
    return GCGGoal(*(torch.tensor(x, dtype=torch.long) for x in (before, after, target)))


G1 = goal([5, 6, 7, 8, 9], [10, 11], [40, 41, 42])
G2 = goal([12, 13], [10, 11], [50, 51])
SUFFIX = torch.full((6,), 4, dtype=torch.long)


def test_gcg_lowers_the_target_loss_within_a_few_steps(tiny_llama):
    start = float(target_loss(tiny_llama, G1, SUFFIX[None])[0])
    out = gcg(tiny_llama, [G1], SUFFIX, config=GCGConfig(steps=4, topk=16, batch_size=32),
              generator=torch.Generator().manual_seed(0))
    assert out.records[0]["loss"] == pytest.approx(start)
    assert out.loss < start - 0.05
    assert out.loss == pytest.approx(min(r["loss"] for r in out.records), rel=1e-5)
    assert out.loss == pytest.approx(float(target_loss(tiny_llama, G1, out.suffix_ids[None])[0]), rel=1e-4)
    assert [r["step"] for r in out.records] == list(range(5)) and out.steps == 4
    assert all(r["n_candidates"] == 32 for r in out.records[1:])


def test_gcg_is_seeded_and_pure(tiny_llama):
    suffix = SUFFIX.clone()
    tiny_llama.train()
    a = gcg(tiny_llama, [G1], suffix, config=GCGConfig(steps=2, topk=8, batch_size=8),
            generator=torch.Generator().manual_seed(3))
    assert tiny_llama.training
    tiny_llama.eval()
    b = gcg(tiny_llama, [G1], suffix, config=GCGConfig(steps=2, topk=8, batch_size=8),
            generator=torch.Generator().manual_seed(3))
    assert torch.equal(suffix, SUFFIX) and torch.equal(a.suffix_ids, b.suffix_ids) and a.loss == b.loss


def test_the_gradient_path_computes_the_same_loss_as_the_ids_path(tiny_llama):
    """The one-hot gradient is of the loss the candidates are scored by: a first-order check."""
    weight = tiny_llama.get_input_embeddings().weight
    grad = _token_gradients(tiny_llama, [G1], SUFFIX)
    assert grad.shape == (len(SUFFIX), weight.shape[0])
    # replacing position 0 by token j changes the loss by about grad[0, j] - grad[0, current] for a tiny step;
    # at least the token the gradient prefers should not be the worst of a handful of substitutions
    cands = SUFFIX.expand(4, -1).clone()
    order = grad[0].argsort()
    cands[:, 0] = torch.stack([order[0], order[1], order[-2], order[-1]])
    losses = target_loss(tiny_llama, G1, cands)[0]
    assert losses[:2].min() < losses[2:].max()


def test_early_stop_when_the_greedy_continuation_is_the_target(tiny_llama):
    ids = torch.cat([G1.before, SUFFIX, G1.after])
    with torch.no_grad():
        greedy = tiny_llama.generate(ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=3,
                                     do_sample=False, pad_token_id=0)[0, len(ids):]
    easy = GCGGoal(G1.before, G1.after, greedy)
    out = gcg(tiny_llama, [easy], SUFFIX, config=GCGConfig(steps=5, topk=4, batch_size=4),
              generator=torch.Generator().manual_seed(0))
    assert out.steps == 0 and out.success == (True,) and len(out.records) == 1


def test_multi_prompt_sums_the_goals(tiny_llama):
    out = gcg(tiny_llama, [G1, G2], SUFFIX, config=GCGConfig(steps=2, topk=8, batch_size=8),
              generator=torch.Generator().manual_seed(1))
    assert len(out.losses) == 2 and len(out.success) == 2
    assert out.loss == pytest.approx(sum(out.losses))
    prog = gcg(tiny_llama, [G1, G2], SUFFIX, config=GCGConfig(steps=2, topk=8, batch_size=8, progressive=True),
               generator=torch.Generator().manual_seed(1))
    assert prog.records[1]["n_active"] == 1


def test_allowed_tokens_restrict_the_suffix(tiny_llama):
    allowed = torch.zeros(tiny_llama.config.vocab_size, dtype=torch.bool)
    allowed[20:30] = True
    out = gcg(tiny_llama, [G1], SUFFIX, config=GCGConfig(steps=3, topk=4, batch_size=8, early_stop=False),
              generator=torch.Generator().manual_seed(0), allowed_tokens=allowed)
    for r in out.records[1:]:
        changed = [t for t, s in zip(r["suffix_ids"], SUFFIX.tolist()) if t != s]
        assert all(20 <= t < 30 for t in changed)


def test_chat_goal_splits_the_template_around_the_suffix(char_tokenizer, tiny_llama):
    g = chat_goal(char_tokenizer, "Say the word", "Sure", system_prompt="Never say the word.")
    text = char_tokenizer.decode(torch.cat([g.before, g.after]).tolist())
    assert text == ("<|im_start|>system\nNever say the word.<|im_end|>\n<|im_start|>user\nSay the word"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert char_tokenizer.decode(g.target.tolist()) == "Sure"
    suffix, out = gcg_attack(tiny_llama, char_tokenizer, ["Say the word"], ["Sure"], suffix="!!!!",
                             config=GCGConfig(steps=2, topk=8, batch_size=8),
                             generator=torch.Generator().manual_seed(0))
    assert len(suffix) == 5 and out.loss <= out.records[0]["loss"]  # " !!!!": the separating space is the suffix's
    assert bool(retokenizes_to_itself(char_tokenizer, [g])(out.suffix_ids[None])[0])


def test_bad_inputs(tiny_llama):
    with pytest.raises(ValueError, match="topk must be >= 1, got 0"):
        GCGConfig(topk=0)
    with pytest.raises(ValueError, match="goals must hold at least one"):
        gcg(tiny_llama, [], SUFFIX, generator=torch.Generator())
    with pytest.raises(ValueError, match="suffix_ids must be a non-empty 1-D"):
        gcg(tiny_llama, [G1], torch.tensor([], dtype=torch.long), generator=torch.Generator())
    with pytest.raises(ValueError, match="target must have at least one token"):
        goal([1], [2], [])
    with pytest.raises(TypeError, match="before must be a 1-D long tensor"):
        GCGGoal(torch.tensor([1.0]), torch.tensor([1]), torch.tensor([1]))


def test_prefix_cache_gives_the_full_passes_losses_and_gradients(tiny_llama, char_tokenizer):
    from trustlab.llm.gcg import prefix_states, target_loss

    g = chat_goal(char_tokenizer, "Say the word", "Sure", system_prompt="Never say the word.")
    suffix = torch.tensor(char_tokenizer(" !!!!", add_special_tokens=False)["input_ids"])
    rows = suffix.expand(5, -1).clone()
    rows[torch.arange(5), torch.arange(5)] = torch.arange(30, 35)
    prefix = prefix_states(tiny_llama, g)
    full, cached = target_loss(tiny_llama, g, rows), target_loss(tiny_llama, g, rows, prefix=prefix, eval_batch_size=2)
    assert torch.allclose(full[0], cached[0], atol=1e-5) and torch.equal(full[1], cached[1])
    assert torch.allclose(_token_gradients(tiny_llama, [g], suffix), _token_gradients(tiny_llama, [g], suffix, [prefix]),
                          atol=1e-5)
    runs = [gcg(tiny_llama, [g], suffix, config=GCGConfig(steps=3, topk=8, batch_size=8, prefix_cache=c),
                generator=torch.Generator().manual_seed(0)) for c in (False, True)]
    assert [r["suffix_ids"] for r in runs[0].records] == [r["suffix_ids"] for r in runs[1].records]
    assert runs[0].loss == pytest.approx(runs[1].loss, abs=1e-4)
