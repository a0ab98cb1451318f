"""SmoothLLM (Robey et al. 2023, Algorithm 1): perturb N copies of a prompt, ask the LLM, take a majority vote.

``smooth_llm(generate, prompt, perturbation=..., q=..., n_copies=N, judge=..., generator=...)``:

1. draw N perturbed copies of the prompt's perturbable span (:mod:`~trustlab.llm.perturbations`);
2. send them to ``generate(prompts) -> responses`` in batches of at most ``batch_size`` (never an empty batch;
   the reference loop ``range(N // batch_size + 1)`` sends one when ``batch_size`` divides N);
3. judge each response; SmoothLLM is **jailbroken iff more than half of the copies are** (a tie counts as not
   jailbroken, :data:`TIE_IS_JAILBROKEN` is False), and it answers with the response of a copy, drawn uniformly
   from ``generator``, whose judgement agrees with the vote.

Guarantee (Robey et al. 2023, Proposition 4.2 and Appendix; swap perturbations): an attack suffix ``S`` on a goal
``G`` is **k-unstable** if changing any ``k`` or more of its characters stops the jailbreak. For a perturbable
prompt ``P = [G; S]`` of ``m`` characters, ``m_S`` of them in ``S``, and ``M = floor(m q / 100)`` swapped
positions, a copy is defended with probability (hypergeometric)

    a = sum_{i = k}^{min(M, m_S)}  C(m_S, i) C(m - m_S, M - i) / C(m, M),

and, the copies being independent, the defense-success probability of the vote is

    DSP = sum_{t = ceil(N/2)}^{N}  C(N, t) a^t (1 - a)^(N - t),

``t`` counting defended copies; ``t = N/2`` (a tie, N even) is a success because ties are not jailbroken.
:func:`defense_success_probability` computes it exactly. The bound assumes the swap's replacement character
always differs from the original; with ``string.printable`` it equals it with probability 1/100, which only the
instability assumption (``k`` changed characters) can see.

Reference:
    Robey, Wong, Hassani & Pappas, "SmoothLLM: Defending Large Language Models Against Jailbreaking Attacks",
    2023, arXiv:2310.03684 (Algorithm 1; Definition 4.1, k-unstable; Proposition 4.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

from trustlab.llm.judge import Judge, RefusalJudge
from trustlab.llm.perturbations import ALPHABET, Prompt, budget, check_q, get_perturbation, perturb_prompt
from trustlab.validation import check_positive_int

__all__ = ["SmoothLLMConfig", "SmoothLLMResult", "TIE_IS_JAILBROKEN", "as_rng", "batched_generate",
           "copy_defended_probability", "defense_success_probability", "majority_vote", "smooth_llm"]

TIE_IS_JAILBROKEN = False  # N even and exactly N/2 copies jailbroken: SmoothLLM is not jailbroken (as the paper)

Generate = Callable[[list[str]], Sequence[str]]


@dataclass(frozen=True)
class SmoothLLMConfig:
    """SmoothLLM's hyperparameters, for the CLI and records.

    Raises:
        ValueError, TypeError: an unknown perturbation, ``q`` outside ``(0, 100]``, ``n_copies < 1`` or
            ``batch_size < 1`` (named).
    """

    perturbation: str = "swap"
    q: float = 10.0
    n_copies: int = 10
    batch_size: int | None = None  # None: all copies in one call to generate

    def __post_init__(self) -> None:
        get_perturbation(self.perturbation)
        object.__setattr__(self, "q", check_q(self.q))
        check_positive_int(self.n_copies, "n_copies")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")


@dataclass(frozen=True)
class SmoothLLMResult:
    """One SmoothLLM answer.

    Attributes:
        jailbroken: the vote: more than half of the copies were judged jailbroken.
        response: a response of a copy on the majority side.
        jailbroken_fraction: the fraction of copies judged jailbroken.
        perturbed_prompts, responses, votes: per copy, in order.
        chosen: the index of the copy whose response is returned.
    """

    jailbroken: bool
    response: str
    jailbroken_fraction: float
    perturbed_prompts: tuple[str, ...]
    responses: tuple[str, ...]
    votes: tuple[bool, ...]
    chosen: int

    def record(self) -> dict[str, Any]:
        """A flat JSON-ready row (the per-copy lists included)."""
        return {"jailbroken": self.jailbroken, "response": self.response,
                "jailbroken_fraction": self.jailbroken_fraction, "n_copies": len(self.votes),
                "votes": list(self.votes), "chosen": self.chosen, "perturbed_prompts": list(self.perturbed_prompts),
                "responses": list(self.responses)}


def as_rng(generator: object) -> np.random.Generator:
    """A numpy ``Generator`` as it is, or a new one seeded with an int.

    Raises:
        TypeError: anything else (there is no global-RNG default).
    """
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise TypeError(f"generator must be a numpy.random.Generator or an int seed, got {type(generator).__name__}")


def batched_generate(generate: Generate, prompts: Sequence[str], batch_size: int | None = None) -> list[str]:
    """``generate`` over ``prompts`` in consecutive non-empty batches of at most ``batch_size``.

    Raises:
        ValueError: ``generate`` returned a different number of responses than prompts, or a non-string.
    """
    prompts = list(prompts)
    size = len(prompts) if batch_size is None else check_positive_int(batch_size, "batch_size")
    responses: list[str] = []
    for start in range(0, len(prompts), max(size, 1)):
        batch = prompts[start:start + size]
        out = list(generate(batch))
        if len(out) != len(batch):
            raise ValueError(f"generate returned {len(out)} responses for {len(batch)} prompts")
        if not all(isinstance(r, str) for r in out):
            raise ValueError("generate must return strings")
        responses += out
    return responses


def majority_vote(votes: Sequence[bool]) -> bool:
    """Jailbroken iff strictly more than half of ``votes`` are True (ties: :data:`TIE_IS_JAILBROKEN`).

    Raises:
        ValueError: no votes (the model produced no outputs).
    """
    if len(votes) == 0:
        raise ValueError("no responses to vote on: the LLM produced no outputs")
    jailbroken = sum(map(bool, votes))
    if 2 * jailbroken == len(votes):
        return TIE_IS_JAILBROKEN
    return 2 * jailbroken > len(votes)


def smooth_llm(generate: Generate, prompt: str | Prompt, *, perturbation: str = "swap", q: float = 10.0,
               n_copies: int = 10, judge: Judge | None = None, generator: np.random.Generator | int,
               batch_size: int | None = None, alphabet: str = ALPHABET) -> SmoothLLMResult:
    """SmoothLLM's answer to ``prompt`` (Robey et al. 2023, Algorithm 1).

    Args:
        generate: ``generate(prompts) -> responses``, any backend (:mod:`~trustlab.llm.backends`).
        prompt: a string (all of it perturbable) or a :class:`~trustlab.llm.perturbations.Prompt`.
        perturbation: ``"swap"``, ``"patch"`` or ``"insert"``.
        q: the percentage of the perturbable characters to perturb, in ``(0, 100]``.
        n_copies: N, the number of perturbed copies.
        judge: ``judge(response) -> bool`` (True: jailbroken); default :class:`~trustlab.llm.judge.RefusalJudge`.
        generator: a numpy ``Generator`` (or an int seed) for the perturbations and the returned copy.
        batch_size: prompts per call to ``generate`` (None: all N in one call).
        alphabet: the characters perturbations draw from.

    Returns:
        The vote, a majority-consistent response and every copy (:class:`SmoothLLMResult`).

    Raises:
        ValueError, TypeError: an empty prompt, unknown perturbation, ``q`` outside ``(0, 100]``, ``N < 1``, or a
            backend returning the wrong number of responses (named).
    """
    config = SmoothLLMConfig(perturbation, q, n_copies, batch_size)
    prompt = Prompt.whole(prompt) if isinstance(prompt, str) else prompt
    if not isinstance(prompt, Prompt):
        raise TypeError(f"prompt must be a str or a Prompt, got {type(prompt).__name__}")
    judge = RefusalJudge() if judge is None else judge
    rng = as_rng(generator)
    perturbed = [perturb_prompt(prompt, config.perturbation, config.q, rng, alphabet=alphabet)
                 for _ in range(config.n_copies)]
    responses = batched_generate(generate, perturbed, config.batch_size)
    votes = tuple(bool(judge(r)) for r in responses)
    jailbroken = majority_vote(votes)
    agreeing = [i for i, v in enumerate(votes) if v == jailbroken]
    chosen = int(agreeing[int(rng.integers(len(agreeing)))])
    return SmoothLLMResult(jailbroken, responses[chosen], sum(votes) / len(votes), tuple(perturbed),
                           tuple(responses), votes, chosen)


def copy_defended_probability(q: float, prompt_len: int, suffix_len: int, k: int) -> float:
    """``a``: the probability that swapping ``M = floor(m q / 100)`` distinct uniform positions of an ``m``-character
    prompt hits at least ``k`` of its ``m_S`` suffix characters (hypergeometric; see the module docstring)."""
    m, m_s = check_positive_int(prompt_len, "prompt_len"), check_positive_int(suffix_len, "suffix_len", minimum=0)
    check_positive_int(k, "k")
    if m_s > m:
        raise ValueError(f"suffix_len must be <= prompt_len, got {m_s} > {m}")
    big_m = budget(m, q)
    total = comb(m, big_m)
    hits = sum(comb(m_s, i) * comb(m - m_s, big_m - i) for i in range(k, min(big_m, m_s) + 1))
    return hits / total


def defense_success_probability(q: float, n_copies: int, prompt_len: int, suffix_len: int, k: int) -> float:
    """DSP: the probability that SmoothLLM with N swap-perturbed copies is not jailbroken by a k-unstable suffix
    (Robey et al. 2023, Proposition 4.2; ties count as defended, see the module docstring).

    Args:
        q: the swap percentage in ``(0, 100]``.
        n_copies: N.
        prompt_len: m, the characters of the perturbable prompt (goal and suffix).
        suffix_len: m_S, the characters of the suffix.
        k: the attack's instability: changing ``k`` or more suffix characters breaks it.
    """
    n = check_positive_int(n_copies, "n_copies")
    a = copy_defended_probability(q, prompt_len, suffix_len, k)
    return float(sum(comb(n, t) * a**t * (1 - a) ** (n - t) for t in range((n + 1) // 2, n + 1)))
