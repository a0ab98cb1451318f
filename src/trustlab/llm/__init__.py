"""Jailbreak suffixes and SmoothLLM on any LLM behind ``generate(prompts) -> responses``.

- :mod:`~trustlab.llm.perturbations`: random swap, patch and insert on the perturbable span of a :class:`Prompt`.
- :mod:`~trustlab.llm.judge`: the refusal-phrase judge (versioned list) or any callable.
- :mod:`~trustlab.llm.smoothllm`: :func:`smooth_llm` (Robey et al. 2023) and its defense-success probability.
- :mod:`~trustlab.llm.backends`: ``generate(prompts) -> responses`` from an OpenAI-compatible endpoint or a local
  transformers model.
- :mod:`~trustlab.llm.gcg`: Greedy Coordinate Gradient (Zou et al. 2023) on any Hugging Face causal LM.

Nothing here imports transformers; the backends and GCG import it when they are used.
"""

from trustlab.llm.backends import OpenAIChatBackend, hf_backend, hf_generate, load_hf_model, smollm2_gguf
from trustlab.llm.gcg import GCGConfig, GCGGoal, GCGResult, chat_goal, gcg, gcg_attack
from trustlab.llm.judge import DEFAULT_JUDGE_VERSION, REFUSAL_PREFIXES, RefusalJudge, describe_judge
from trustlab.llm.perturbations import (ALPHABET, PERTURBATIONS, Prompt, get_perturbation, perturb_prompt,
                                        random_insert, random_patch, random_swap)
from trustlab.llm.smoothllm import (TIE_IS_JAILBROKEN, SmoothLLMConfig, SmoothLLMResult, batched_generate,
                                    copy_defended_probability, defense_success_probability, majority_vote,
                                    smooth_llm)

__all__ = ["OpenAIChatBackend", "hf_backend", "hf_generate", "load_hf_model", "smollm2_gguf", "GCGConfig", "GCGGoal", "GCGResult", "chat_goal", "gcg", "gcg_attack",
           "DEFAULT_JUDGE_VERSION", "REFUSAL_PREFIXES", "RefusalJudge", "describe_judge", "ALPHABET",
           "PERTURBATIONS", "Prompt", "get_perturbation", "perturb_prompt", "random_insert", "random_patch",
           "random_swap", "TIE_IS_JAILBROKEN", "SmoothLLMConfig", "SmoothLLMResult", "batched_generate",
           "copy_defended_probability", "defense_success_probability", "majority_vote", "smooth_llm"]
