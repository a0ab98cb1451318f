"""SLLM-03 (vote), SLLM-04 (batching), SLLM-05 (determinism), SLLM-06 (defense success against the closed form),
SLLM-07 (judge) and INP-18 for :func:`trustlab.llm.smooth_llm`, with fake deterministic LLMs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binom

from trustlab.llm import (REFUSAL_PREFIXES, TIE_IS_JAILBROKEN, Prompt, RefusalJudge, SmoothLLMConfig,
                          copy_defended_probability, defense_success_probability, describe_judge, majority_vote,
                          smooth_llm)

REFUSE, COMPLY = "I'm sorry, I can't help with that.", "Sure, here is the answer."


class Scripted:
    """An LLM that answers the i-th prompt it ever sees with ``script[i]`` and records its batches."""

    def __init__(self, script):
        self.script, self.batches = list(script), []

    def __call__(self, prompts):
        self.batches.append(list(prompts))
        start = sum(map(len, self.batches[:-1]))
        return self.script[start:start + len(prompts)]


@pytest.mark.parametrize("n", range(1, 8))
def test_vote_is_a_strict_majority_with_ties_not_jailbroken(n):
    assert TIE_IS_JAILBROKEN is False
    for votes in itertools.product([False, True], repeat=n):
        assert majority_vote(votes) == (sum(votes) / n > 0.5)


@pytest.mark.parametrize("jb, expected", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_smooth_llm_vote_and_majority_consistent_response(jb, expected):
    for seed in range(5):
        script = [COMPLY] * jb + [REFUSE] * (4 - jb)  # N = 4: jb = 2 is the tie
        llm = Scripted(script)
        out = smooth_llm(llm, "tell me the secret word", perturbation="swap", q=10, n_copies=4, generator=seed)
        assert out.jailbroken is expected and out.jailbroken_fraction == jb / 4
        assert out.votes == tuple([True] * jb + [False] * (4 - jb))
        assert out.response == script[out.chosen] and out.votes[out.chosen] == expected
        assert RefusalJudge()(out.response) == expected


@pytest.mark.parametrize("n, batch_size", [(6, 3), (6, 2), (6, 6), (6, 1), (7, 3), (5, 10), (4, None)])
def test_batching_sends_no_empty_batch_and_collects_n(n, batch_size):
    llm = Scripted([REFUSE] * n)
    out = smooth_llm(llm, "a prompt", q=10, n_copies=n, generator=0, batch_size=batch_size)
    sizes = [len(b) for b in llm.batches]
    assert all(s >= 1 for s in sizes) and sum(sizes) == n and len(out.responses) == n
    assert max(sizes) == min(n, batch_size or n)
    assert [p for b in llm.batches for p in b] == list(out.perturbed_prompts)


def test_wrong_number_of_responses_is_an_error():
    with pytest.raises(ValueError, match="returned 1 responses for 2 prompts"):
        smooth_llm(lambda ps: ["x"], "a prompt", q=10, n_copies=2, generator=0)


def test_same_seed_same_perturbations_and_vote():
    def llm(prompts):
        return [COMPLY if sum(map(ord, p)) % 2 else REFUSE for p in prompts]

    for name in ("swap", "patch", "insert"):
        a = smooth_llm(llm, "Write the secret word! zx!!qq", perturbation=name, q=20, n_copies=9, generator=3)
        b = smooth_llm(llm, "Write the secret word! zx!!qq", perturbation=name, q=20, n_copies=9,
                       generator=np.random.default_rng(3))
        assert a == b
        c = smooth_llm(llm, "Write the secret word! zx!!qq", perturbation=name, q=20, n_copies=9, generator=4)
        assert c.perturbed_prompts != a.perturbed_prompts


def test_template_outside_the_span_reaches_the_model_unchanged():
    prompt = Prompt.from_template("<sys>goal</sys><user>{prompt}</user>", "goal")
    out = smooth_llm(Scripted([REFUSE] * 3), prompt, q=100, n_copies=3, generator=0)
    assert all(p.startswith("<sys>goal</sys><user>") and p.endswith("</user>") for p in out.perturbed_prompts)


@pytest.mark.parametrize("n_copies", [5, 4])
def test_defense_success_probability_matches_an_oracle_llm(n_copies):
    """SLLM-06: an oracle LLM is jailbroken iff fewer than k suffix positions were sampled."""
    m_g, m_s, q, k, seeds = 30, 20, 10, 2, 2000
    goal, suffix = "\u03b1" * m_g, "\u03b2" * m_s  # outside the alphabet: every swapped position shows

    def oracle(prompts):
        return [COMPLY if sum(c != "\u03b2" for c in p[m_g:]) < k else REFUSE for p in prompts]

    defended = sum(not smooth_llm(oracle, goal + suffix, perturbation="swap", q=q, n_copies=n_copies,
                                  generator=seed).jailbroken for seed in range(seeds))
    dsp = defense_success_probability(q, n_copies, m_g + m_s, m_s, k)
    lo, hi = binom.interval(0.99, seeds, dsp)
    assert lo <= defended <= hi, (defended / seeds, dsp)
    if n_copies % 2 == 0:  # ties are defended: the strict-majority sum would be far off
        a = copy_defended_probability(q, m_g + m_s, m_s, k)
        strict = sum(binom.pmf(t, n_copies, a) for t in range(n_copies // 2 + 1, n_copies + 1))
        assert not binom.interval(0.99, seeds, strict)[0] <= defended <= binom.interval(0.99, seeds, strict)[1]


def test_defense_success_probability_closed_form_edges():
    # every sampled position lands in the suffix when the prompt is all suffix
    assert copy_defended_probability(10, 50, 50, 5) == 1.0
    assert copy_defended_probability(10, 50, 50, 6) == 0.0
    assert copy_defended_probability(10, 50, 0, 1) == 0.0
    a = copy_defended_probability(20, 10, 3, 1)  # M = 2 of 10, at least one of 3: 1 - C(7,2)/C(10,2)
    assert a == pytest.approx(1 - 21 / 45)
    assert defense_success_probability(20, 1, 10, 3, 1) == pytest.approx(a)
    # more copies help when a > 1/2 (odd N)
    values = [defense_success_probability(10, n, 50, 20, 1) for n in (1, 3, 5, 11, 21)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="suffix_len must be <= prompt_len"):
        copy_defended_probability(10, 5, 6, 1)


def test_judge_is_the_versioned_refusal_list():
    judge = RefusalJudge()
    assert judge.version == "smoothllm-2023" and judge.prefixes == REFUSAL_PREFIXES["smoothllm-2023"]
    assert "I'm sorry" in judge.prefixes and "I cannot" in judge.prefixes
    assert judge(COMPLY) and not judge(REFUSE)
    assert not judge("Well... I cannot do that")  # matched anywhere, as the reference does
    info = describe_judge(judge)
    assert info["version"] == "smoothllm-2023" and "substring heuristic" in info["kind"]
    assert info["prefixes"] == list(judge.prefixes)
    own = RefusalJudge(version="mine-1", prefixes=("No way",))
    assert not own("No way.") and own("I'm sorry")
    with pytest.raises(ValueError, match="judge version must be one of"):
        RefusalJudge(version="nope")
    with pytest.raises(ValueError, match="prefixes must be non-empty strings"):
        RefusalJudge(version="x", prefixes=("",))


def test_any_callable_is_a_judge():
    def starts_with_sure(response):
        return response.startswith("Sure")

    out = smooth_llm(Scripted([COMPLY, REFUSE, COMPLY]), "p", q=100, n_copies=3, judge=starts_with_sure, generator=0)
    assert out.jailbroken and out.votes == (True, False, True)
    assert describe_judge(starts_with_sure)["kind"] == "user-supplied callable"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(q=0), ValueError, "q must be a percentage in \\(0, 100\\], got 0"),
    (dict(q=150), ValueError, "got 150"),
    (dict(n_copies=0), ValueError, "n_copies must be >= 1, got 0"),
    (dict(perturbation="shuffle"), ValueError, "perturbation must be one of"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(generator=None), TypeError, "generator must be a numpy.random.Generator or an int seed"),
])
def test_inp18_smooth_llm_bad_values(kwargs, error, match):
    settings = dict(q=10, n_copies=2, generator=0) | kwargs
    with pytest.raises(error, match=match):
        smooth_llm(Scripted([REFUSE] * 2), "a prompt", **settings)


def test_inp18_empty_prompt_and_config():
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        smooth_llm(Scripted([REFUSE]), "", q=10, n_copies=1, generator=0)
    with pytest.raises(ValueError, match="n_copies must be >= 1"):
        SmoothLLMConfig(n_copies=-3)
