"""SmoothLLM's character-level perturbations (Robey et al. 2023, Algorithm 2) and where in a prompt they apply.

Each perturbation is a pure function ``f(text, q, rng, *, alphabet) -> text`` of a string, a percentage
``q in (0, 100]`` and a numpy ``Generator``. With ``M = floor(len(text) * q / 100)``:

- **swap**: ``M`` distinct positions are sampled and each is replaced by a character drawn uniformly from
  ``alphabet`` (which may equal the original, so the Hamming distance is at most ``M``);
- **patch**: one contiguous span of ``M`` characters, starting uniformly at random, is replaced by ``M`` random
  characters;
- **insert**: ``M`` distinct positions are sampled and a random character is inserted after each, so the text
  grows by exactly ``M``.

A :class:`Prompt` is a full prompt (a chat template with its system turn, say) and the one span of it that may be
perturbed (the user's goal and suffix); :func:`perturb_prompt` changes that span only and leaves every other
byte as it was, even where the span's text also occurs elsewhere in the prompt (the reference implementation's
``full_prompt.replace(perturbable, perturbed)`` replaces every occurrence).

Reference:
    Robey, Wong, Hassani & Pappas, "SmoothLLM: Defending Large Language Models Against Jailbreaking Attacks",
    2023, arXiv:2310.03684 (Sec. 3, Algorithm 2).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ALPHABET", "PERTURBATIONS", "Prompt", "budget", "check_q", "get_perturbation", "perturb_prompt",
           "random_insert", "random_patch", "random_swap"]

ALPHABET = string.printable  # the paper's alphabet A: 100 printable ASCII characters


def check_q(q: object) -> float:
    """``q`` as a float if it is a percentage in ``(0, 100]``.

    Raises:
        TypeError: not a number.
        ValueError: outside ``(0, 100]`` or not finite (named).
    """
    if isinstance(q, bool) or not isinstance(q, (int, float)):
        raise TypeError(f"q must be a number (a percentage), got {q!r}")
    if not (math.isfinite(q) and 0 < q <= 100):
        raise ValueError(f"q must be a percentage in (0, 100], got {q}")
    return float(q)


def budget(length: int, q: float) -> int:
    """``M = floor(length * q / 100)``, the number of characters a perturbation changes (or inserts)."""
    return int(length * check_q(q) // 100)


def _check_alphabet(alphabet: str) -> str:
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty string, got {alphabet!r}")
    return alphabet


def _characters(rng: np.random.Generator, m: int, alphabet: str) -> list[str]:
    return [alphabet[i] for i in rng.integers(0, len(alphabet), size=m)]


def random_swap(text: str, q: float, rng: np.random.Generator, *, alphabet: str = ALPHABET) -> str:
    """Replace ``M`` distinct, uniformly sampled positions of ``text`` by random characters of ``alphabet``."""
    m = budget(len(text), q)
    positions = rng.choice(len(text), size=m, replace=False)
    chars = list(text)
    for i, c in zip(positions.tolist(), _characters(rng, m, _check_alphabet(alphabet))):
        chars[i] = c
    return "".join(chars)


def random_patch(text: str, q: float, rng: np.random.Generator, *, alphabet: str = ALPHABET) -> str:
    """Replace one contiguous span of ``M`` characters, starting uniformly in ``[0, len - M]``, by random ones."""
    m = budget(len(text), q)
    start = int(rng.integers(0, len(text) - m + 1))
    return text[:start] + "".join(_characters(rng, m, _check_alphabet(alphabet))) + text[start + m:]


def random_insert(text: str, q: float, rng: np.random.Generator, *, alphabet: str = ALPHABET) -> str:
    """After each of ``M`` distinct, uniformly sampled positions insert a random character (length grows by M)."""
    m = budget(len(text), q)
    positions = sorted(rng.choice(len(text), size=m, replace=False).tolist())
    new = _characters(rng, m, _check_alphabet(alphabet))
    pieces, last = [], 0
    for i, c in zip(positions, new):
        pieces += [text[last:i + 1], c]
        last = i + 1
    pieces.append(text[last:])
    return "".join(pieces)


Perturbation = Callable[..., str]
PERTURBATIONS: dict[str, Perturbation] = {"swap": random_swap, "patch": random_patch, "insert": random_insert}


def get_perturbation(name: str) -> Perturbation:
    """The perturbation registered as ``name`` (``"swap"``, ``"patch"`` or ``"insert"``).

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if name not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {sorted(PERTURBATIONS)}, got {name!r}")
    return PERTURBATIONS[name]


@dataclass(frozen=True)
class Prompt:
    """A full prompt and the span ``text[start:end]`` that SmoothLLM may perturb; the rest is never changed.

    Build it with :meth:`whole` (the whole text is perturbable, as for a chat API's user message), :meth:`around`
    (find the perturbable text inside a full prompt) or :meth:`from_template` (a placeholder marks the span).

    Raises:
        ValueError: an empty text, or a span that is empty or outside the text.
    """

    text: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise ValueError(f"prompt must be a non-empty string, got {self.text!r}")
        if not (0 <= self.start < self.end <= len(self.text)):
            raise ValueError(f"perturbable span [{self.start}, {self.end}) must be non-empty and inside the "
                             f"prompt of length {len(self.text)}")

    @property
    def perturbable(self) -> str:
        return self.text[self.start:self.end]

    @classmethod
    def whole(cls, text: str) -> Prompt:
        """All of ``text`` is perturbable."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"prompt must be a non-empty string, got {text!r}")
        return cls(text, 0, len(text))

    @classmethod
    def around(cls, text: str, perturbable: str, *, occurrence: int = -1) -> Prompt:
        """The span of ``perturbable`` inside ``text``; by default its last occurrence (a chat template puts the
        user's turn after the system prompt, which may quote the same words).

        Raises:
            ValueError: ``perturbable`` is empty or not found, or there is no such occurrence.
        """
        if not isinstance(perturbable, str) or not perturbable:
            raise ValueError(f"perturbable text must be a non-empty string, got {perturbable!r}")
        starts, i = [], text.find(perturbable)
        while i >= 0:
            starts.append(i)
            i = text.find(perturbable, i + 1)
        if not starts:
            raise ValueError(f"perturbable text {perturbable[:60]!r} not found in the prompt")
        if not -len(starts) <= occurrence < len(starts):
            raise ValueError(f"occurrence {occurrence} out of range: the perturbable text occurs {len(starts)} times")
        start = starts[occurrence]
        return cls(text, start, start + len(perturbable))

    @classmethod
    def from_template(cls, template: str, perturbable: str, *, placeholder: str = "{prompt}") -> Prompt:
        """``template`` with its single ``placeholder`` replaced by ``perturbable``, which is the span.

        Raises:
            ValueError: the placeholder occurs other than once, or ``perturbable`` is empty.
        """
        count = template.count(placeholder)
        if count != 1:
            raise ValueError(f"template must contain the placeholder {placeholder!r} exactly once, found {count}")
        if not isinstance(perturbable, str) or not perturbable:
            raise ValueError(f"perturbable text must be a non-empty string, got {perturbable!r}")
        start = template.index(placeholder)
        return cls(template[:start] + perturbable + template[start + len(placeholder):], start,
                   start + len(perturbable))


def perturb_prompt(prompt: Prompt, perturbation: str | Perturbation, q: float, rng: np.random.Generator, *,
                   alphabet: str = ALPHABET) -> str:
    """The full prompt with its perturbable span (only) perturbed; every byte outside the span is unchanged.

    ``M`` counts the span's characters, not the full prompt's.
    """
    fn = get_perturbation(perturbation) if isinstance(perturbation, str) else perturbation
    new = fn(prompt.perturbable, check_q(q), rng, alphabet=alphabet)
    return prompt.text[:prompt.start] + new + prompt.text[prompt.end:]
