"""Fixtures of the LLM tests: a tiny character-level tokenizer with a chat template and a tiny randomly initialised
Llama model (nothing downloads), and an OpenAI-compatible chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import string
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_char_tokenizer():
    """A fast tokenizer with one token per printable character plus four special tokens."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + list(string.printable))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                               eos_token="<|im_end|>", additional_special_tokens=SPECIALS[2:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_llama(vocab_size: int, seed: int = 0):
    """A 2-layer Llama with hidden size 32, randomly initialised from ``seed`` (the global RNG state is restored)."""
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, tie_word_embeddings=False,
                                      initializer_range=0.3)  # peaked logits: the suffix matters
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))


class ChatServer:
    """An OpenAI-compatible ``POST /v1/chat/completions`` on 127.0.0.1 (port 0); ``answer(user_message) -> str``.

    ``fail_first`` requests are answered with ``fail_status``; ``delay`` seconds pass before each answer. Every
    request's headers and body are kept, and the most requests ever in flight at once.
    """

    def __init__(self, answer, *, fail_first: int = 0, fail_status: int = 503, delay: float = 0.0):
        self.answer, self.fail_first, self.fail_status, self.delay = answer, fail_first, fail_status, delay
        self.requests: list[dict] = []
        self.lock, self.in_flight, self.max_in_flight = threading.Lock(), 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    if n <= server.fail_first:
                        self._send(server.fail_status, {"error": {"message": "try again"}})
                    elif self.path != "/v1/chat/completions":
                        self._send(404, {"error": {"message": "no such route"}})
                    else:
                        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
                        content = server.answer(user)
                        self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": content}}]})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def chat_server():
    """The :class:`ChatServer` class, to start as ``with chat_server(answer, ...) as server``."""
    return ChatServer
