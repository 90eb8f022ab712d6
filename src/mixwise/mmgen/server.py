"""A minimal OpenAI-compatible chat server for MM-GEN generation on one machine (stdlib `http.server` only).

Serves `POST /v1/chat/completions` (non-streaming), `GET /v1/models` and `GET /health`, bound to 127.0.0.1 by
default. The backend is either

* a local transformers VLM (`--model PATH`, any `AutoModelForImageTextToText`; greedy unless `temperature > 0`),
  through the same code as [`mixwise.mmgen.generators.LocalVLMGenerator`]; requests are served one at a time on the
  model, concurrently on the socket; or
* **a scripted test double** (`--scripted FILE.json`, a list of reply texts, cycled): it does not look at the
  request and exists to test clients (parsing, retries, resumption) — never a stand-in for a model in results.

For tests, [`ChatServer`] also injects faults: the first `fail_first` requests get HTTP `fail_status` (e.g. 503,
to exercise retries), and clearing `server.gate` (a `threading.Event`) holds every request until it is set again
(to kill a client deterministically while requests are in flight).

Real deployments should prefer a production server (vLLM, `transformers serve`); this one exists so that the
HTTP path can be tested and demonstrated offline without extra dependencies. MM-GEN: Joshi et al., 2025,
arXiv:2501.04155.

    python -m mixwise.mmgen.server --model path/to/vlm --port 8000
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from PIL import Image


class ChatBackend(Protocol):
    name: str

    def complete(self, image: Image.Image | None, prompt: str, max_tokens: int, temperature: float) -> str: ...


class ModelBackend:
    """A local transformers VLM (see [`mixwise.mmgen.generators.LocalVLMGenerator`])."""

    def __init__(self, model: Any, processor: Any = None):
        from .generators import LocalVLMGenerator

        self.generator = LocalVLMGenerator(model, processor)
        self.name = self.generator.name

    def complete(self, image: Image.Image | None, prompt: str, max_tokens: int, temperature: float) -> str:
        sample = temperature > 0
        return self.generator.complete(
            [image], [prompt], max_new_tokens=max_tokens, do_sample=sample, temperature=temperature or 1.0
        )[0]


class ScriptedBackend:
    """**Test double**: replies with the given texts in turn (cycling), whatever the request."""

    def __init__(self, replies: Sequence[str], name: str = "scripted-test-double"):
        if not replies:
            raise ValueError("a scripted backend needs at least one reply")
        self._replies = itertools.cycle(list(replies))
        self._lock = threading.Lock()
        self.name = name

    def complete(self, image: Image.Image | None, prompt: str, max_tokens: int, temperature: float) -> str:
        with self._lock:
            return next(self._replies)


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def decode_image_url(url: str) -> Image.Image:
    """A PIL image from a `data:image/...;base64,...` URL (remote URLs are refused: the server is offline)."""
    if not url.startswith("data:"):
        raise RequestError(400, "only base64 data URLs are accepted for images (this server does not fetch URLs)")
    try:
        _, payload = url.split(",", 1)
        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            return im.convert("RGB")
    except Exception as err:
        raise RequestError(400, f"cannot decode the image data URL: {err}") from None


def read_messages(messages: Any) -> tuple[Image.Image | None, str]:
    """`(first image, text)` of the last user message (text parts joined by newlines)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    user = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not user:
        raise RequestError(400, "no user message")
    content = user[-1].get("content")
    if isinstance(content, str):
        return None, content
    if not isinstance(content, list):
        raise RequestError(400, "message content must be a string or a list of parts")
    image, texts = None, []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            if image is None and isinstance(url, str):
                image = decode_image_url(url)
    return image, "\n".join(texts)


class ChatServer(ThreadingHTTPServer):
    """The server; use as a context manager (starts a thread, yields itself, shuts down) or call `start`/`stop`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        backend: ChatBackend,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        verbose: bool = False,
    ):
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name or backend.name
        self.fail_first = int(fail_first)
        self.fail_status = int(fail_status)
        self.verbose = verbose
        self.gate = threading.Event()
        self.gate.set()
        self.received = 0  # chat requests received (including injected failures)
        self.completed = 0  # chat requests answered with 200
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.serve_forever, name="mmgen-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()  # release held requests so their threads can finish
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            sys.stderr.write("mmgen-server: " + format % args + "\n")

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, json.JSONDecodeError) as err:
            self._error(400, f"invalid JSON body: {err}")
            return
        srv = self.server
        with srv._count_lock:
            srv.received += 1
            fail = srv.received <= srv.fail_first
        if fail:
            self._error(srv.fail_status, "injected failure (fail_first)")
            return
        srv.gate.wait()
        try:
            if body.get("stream"):
                raise RequestError(400, "streaming is not supported")
            image, prompt = read_messages(body.get("messages"))
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512)
            temperature = float(body.get("temperature") or 0.0)
            text = srv.backend.complete(image, prompt, max_tokens, temperature)
        except RequestError as err:
            self._error(err.status, str(err))
            return
        except Exception as err:  # the backend failed: a server error, which clients may retry
            self._error(500, f"{type(err).__name__}: {err}")
            return
        with srv._count_lock:
            srv.completed += 1
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or srv.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            },
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixwise.mmgen.server", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="local directory of an AutoModelForImageTextToText + processor")
    what.add_argument("--scripted", help="TEST DOUBLE: JSON file with a list of reply texts, cycled")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--name", default=None, help="model name reported by /v1/models")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --fail-status")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.model:
        backend: ChatBackend = ModelBackend(args.model)
    else:
        with open(args.scripted) as f:
            backend = ScriptedBackend(json.load(f))
    server = ChatServer(
        backend, args.host, args.port, args.name, args.fail_first, args.fail_status, verbose=args.verbose
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"mixwise-mmgen-server listening on {server.url} (backend {backend.name})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
