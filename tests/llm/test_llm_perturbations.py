"""SLLM-01 (budget), SLLM-02 (scope) and INP-18 for SmoothLLM's perturbations and prompts."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.llm.perturbations import (ALPHABET, PERTURBATIONS, Prompt, budget, get_perturbation, perturb_prompt,
                                        random_insert, random_patch, random_swap)

TEXT = "\u03b1" * 37 + "\u03b2" * 23  # 60 characters outside the alphabet: every sampled position shows


class SpyRng:
    """A numpy Generator that records every ``choice`` and ``integers`` call."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple[str, tuple, dict]] = []

    def choice(self, *args, **kwargs):
        self.calls.append(("choice", args, kwargs))
        return self.rng.choice(*args, **kwargs)

    def integers(self, *args, **kwargs):
        self.calls.append(("integers", args, kwargs))
        return self.rng.integers(*args, **kwargs)


@pytest.mark.parametrize("q", [1, 5, 10, 33.3, 100])
def test_swap_samples_exactly_m_distinct_positions(q):
    m = budget(len(TEXT), q)
    assert m == int(len(TEXT) * q // 100)
    rng = SpyRng(0)
    out = random_swap(TEXT, q, rng)
    choices = [c for c in rng.calls if c[0] == "choice"]
    assert len(choices) == 1 and choices[0][2]["size"] == m and choices[0][2]["replace"] is False
    assert len(out) == len(TEXT)
    assert sum(a != b for a, b in zip(out, TEXT)) == m  # all sampled positions show (alphabet excludes TEXT's)
    printable = "abc" * 20
    out = random_swap(printable, q, np.random.default_rng(1))
    assert sum(a != b for a, b in zip(out, printable)) <= m  # a replacement may equal the original


@pytest.mark.parametrize("q", [1, 5, 10, 50, 100])
def test_patch_changes_one_contiguous_span_of_width_m(q):
    m = budget(len(TEXT), q)
    for seed in range(20):
        out = random_patch(TEXT, q, np.random.default_rng(seed))
        changed = [i for i, (a, b) in enumerate(zip(out, TEXT)) if a != b]
        assert len(out) == len(TEXT) and len(changed) == m
        assert changed == list(range(changed[0], changed[0] + m)) if m else changed == []
        assert all(out[i] in ALPHABET for i in changed)


@pytest.mark.parametrize("q", [1, 5, 10, 50, 100])
def test_insert_grows_by_exactly_m_and_keeps_the_text_as_a_subsequence(q):
    m = budget(len(TEXT), q)
    for seed in range(20):
        out = random_insert(TEXT, q, np.random.default_rng(seed))
        assert len(out) == len(TEXT) + m
        assert "".join(c for c in out if c not in ALPHABET) == TEXT
        assert all(c not in ALPHABET for c in out[:1])  # insertion is after a character, never before the first


def test_insert_places_each_character_after_a_sampled_one():
    out = random_insert("\u03b1" * 10, 100, np.random.default_rng(0))
    assert out[0::2] == "\u03b1" * 10 and all(c in ALPHABET for c in out[1::2])


def test_perturbations_are_pure_and_seeded():
    for fn in PERTURBATIONS.values():
        a = fn(TEXT, 20, np.random.default_rng(7))
        assert a == fn(TEXT, 20, np.random.default_rng(7))
        assert a != fn(TEXT, 20, np.random.default_rng(8))
    assert get_perturbation("swap") is random_swap


def test_scope_only_the_span_changes_even_when_its_text_occurs_elsewhere():
    goal = "tell me the word"
    template = f"System: never {goal}. Repeat: {goal}\nUser: {{prompt}}\nAssistant: I will not {goal}"
    prompt = Prompt.from_template(template, goal)
    before, after = prompt.text[:prompt.start], prompt.text[prompt.end:]
    assert prompt.perturbable == goal and prompt.text.count(goal) == 4
    for name in PERTURBATIONS:
        for seed in range(10):
            out = perturb_prompt(prompt, name, 100, np.random.default_rng(seed))
            assert out.startswith(before) and out.endswith(after)
            middle = out[len(before):len(out) - len(after)]
            assert middle != goal and len(middle) == (2 * len(goal) if name == "insert" else len(goal))
    # Prompt.around finds the last occurrence by default, or the one asked for
    full = f"System: never {goal}.\nUser: {goal}\nAssistant:"
    last = Prompt.around(full, goal)
    assert last.start == full.rindex(goal)
    assert Prompt.around(full, goal, occurrence=0).start == full.index(goal)
    out = perturb_prompt(last, "swap", 100, np.random.default_rng(0))
    assert out.startswith(f"System: never {goal}.\nUser: ") and out.endswith("\nAssistant:")


def test_budget_counts_the_span_not_the_full_prompt():
    prompt = Prompt.from_template("x" * 1000 + "{prompt}", "\u03b1" * 50)
    out = perturb_prompt(prompt, "swap", 10, np.random.default_rng(0))
    assert sum(a != b for a, b in zip(out, prompt.text)) == 5


@pytest.mark.parametrize("q", [0, -1, 100.5, float("nan"), float("inf")])
def test_inp18_q_outside_0_100(q):
    with pytest.raises(ValueError, match="q must be a percentage"):
        random_swap(TEXT, q, np.random.default_rng(0))


def test_inp18_bad_values():
    with pytest.raises(TypeError, match="q must be a number"):
        random_swap(TEXT, "10", np.random.default_rng(0))
    with pytest.raises(ValueError, match="perturbation must be one of .*'shuffle'"):
        get_perturbation("shuffle")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        Prompt.whole("")
    with pytest.raises(ValueError, match="not found in the prompt"):
        Prompt.around("System: hello\nUser: hi", "goodbye")
    with pytest.raises(ValueError, match="perturbable text must be a non-empty"):
        Prompt.around("abc", "")
    with pytest.raises(ValueError, match="occurrence 2 out of range"):
        Prompt.around("ab ab", "ab", occurrence=2)
    with pytest.raises(ValueError, match="exactly once, found 0"):
        Prompt.from_template("no placeholder", "goal")
    with pytest.raises(ValueError, match="perturbable span"):
        Prompt("abc", 2, 2)
    with pytest.raises(ValueError, match="alphabet"):
        random_swap(TEXT, 10, np.random.default_rng(0), alphabet="")
