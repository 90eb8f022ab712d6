"""MM-GEN step 2c: the generators — a local VLM, an OpenAI-compatible endpoint, test doubles.

**Generators** ([`Generator`]): [`LocalVLMGenerator`] (any `AutoModelForImageTextToText` by path, greedy or
sampled, through the processor's chat template), [`OpenAIChatGenerator`] (an OpenAI-compatible
`/v1/chat/completions` endpoint, image as a base64 data URL, a thread pool, retries with exponential backoff on
connection errors, timeouts, 429 and 5xx), [`ToyRuleGenerator`] (a labelled, deterministic stand-in for the toy
world's demo) and [`ScriptedGenerator`] (a test double replaying given texts).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..extras import require
from ..fingerprint import stable_seed
from ..models import load_model


@dataclass
class GenerationRequest:
    """What a generator sees: the image, the prompt text, how many pairs were asked for, and the item's key."""

    image: Image.Image
    prompt: str
    n_pairs: int = 3
    key: tuple[str, str] = ("", "")


@dataclass
class GenerationOutput:
    """The raw text of one request, or the error that prevented it."""

    text: str | None = None
    error: str | None = None
    attempts: int = 1


@runtime_checkable
class Generator(Protocol):
    """Turns requests into raw texts. `generate` yields `(position in requests, output)` as outputs complete, in
    any order, exactly once per request; it pulls requests lazily so that images are loaded only when needed."""

    name: str

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[int, GenerationOutput]]: ...


def _chunks(requests: Iterable[GenerationRequest], size: int) -> Iterator[list[tuple[int, GenerationRequest]]]:
    chunk: list[tuple[int, GenerationRequest]] = []
    for i, req in enumerate(requests):
        chunk.append((i, req))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class LocalVLMGenerator:
    """A local transformers VLM: `AutoModelForImageTextToText` + `AutoProcessor` from a path (or given objects).

    Each request is rendered with the processor's chat template as one user turn `[image, prompt]` plus the
    generation prompt; batches are left-padded. Greedy by default (`do_sample=False`); with sampling, the torch
    RNG is seeded per batch from `seed` and the batch's first key (so outputs depend on the batch composition).
    An exception in a batch becomes an `error` output for each of its requests (retried on the next run).
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.95,
        batch_size: int = 4,
        seed: int = 0,
        device: str | None = None,
    ):
        import torch

        if isinstance(model, str | os.PathLike):
            path = os.fspath(model)
            self.name = f"local:{path}"
            model, loaded = load_model(path)
            processor = processor or loaded
        else:
            if processor is None:
                raise ValueError("LocalVLMGenerator: give a processor together with a model object")
            self.name = f"local:{getattr(model, 'name_or_path', type(model).__name__)}"
        self.model = model.to(device) if device else model
        self.model.eval()
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._torch = torch
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def complete(
        self,
        images: Sequence[Image.Image | None],
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        **overrides: Any,
    ) -> list[str]:
        """Raw completions for aligned `images` and `prompts` (one batch; thread-safe). With every image `None`
        the prompts are sent as text only; `overrides` may set `do_sample`, `temperature`, `top_p`, `seed`."""
        torch = self._torch
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        with_images = any(im is not None for im in images)
        if with_images and not all(im is not None for im in images):
            raise ValueError("a batch cannot mix requests with and without an image")
        head = [{"type": "image"}] if with_images else []
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [*head, {"type": "text", "text": p}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]
        tok = self._tokenizer()
        do_sample = overrides.get("do_sample", self.do_sample)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(max_new_tokens or self.max_new_tokens),
            "do_sample": do_sample,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        }
        if do_sample:
            kwargs.update(
                temperature=overrides.get("temperature", self.temperature), top_p=overrides.get("top_p", self.top_p)
            )
        with self._lock:
            old = tok.padding_side
            tok.padding_side = "left"
            try:
                kwargs_in: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
                if with_images:
                    kwargs_in["images"] = [[im] for im in images]
                inputs = self.processor(**kwargs_in).to(self.model.device)
            finally:
                tok.padding_side = old
            seed = overrides.get("seed", self.seed)
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(int(seed) & 0x7FFFFFFF)
                out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=True)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[int, GenerationOutput]]:
        for chunk in _chunks(requests, self.batch_size):
            seed = int(stable_seed(self.seed, *chunk[0][1].key).generate_state(1)[0])
            try:
                texts = self.complete([r.image for _, r in chunk], [r.prompt for _, r in chunk], seed=seed)
                outputs = [GenerationOutput(text=t) for t in texts]
            except Exception as err:  # recorded per request, retried on the next run
                outputs = [GenerationOutput(error=f"{type(err).__name__}: {err}") for _ in chunk]
            for (i, _), output in zip(chunk, outputs):
                yield i, output


def image_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """`data:image/png;base64,...` for an OpenAI-style `image_url` part."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


class HTTPStatusError(RuntimeError):
    def __init__(self, status: int, body: str):
        self.status = status
        super().__init__(f"HTTP {status}: {body[:300]}")


RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIChatGenerator:
    """An OpenAI-compatible chat endpoint (vLLM, `transformers serve`, [`mixwise.mmgen.server`], hosted APIs).

    POSTs `{base_url}/chat/completions` (`/v1` is appended when `base_url` lacks it) with one user message
    `[image_url (base64 PNG data URL), text]`. Up to `concurrency` requests are in flight (a thread pool, one
    `requests.Session` per thread). A request that fails with a connection error, a timeout (`timeout` seconds),
    HTTP 408/409/425/429 or 5xx is retried up to `max_retries` times after `min(max_backoff, backoff · 2^k)`
    seconds (times a random factor in [0.5, 1]; a `Retry-After` header wins); other HTTP errors are not retried.
    The API key is read from the environment variable `api_key_env` when set.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        max_tokens: int = 512,
        temperature: float = 0.0,
        concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key_env: str | None = "OPENAI_API_KEY",
        extra_body: Mapping[str, Any] | None = None,
    ):
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.name = f"openai:{model}@{base}"
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.extra_body = dict(extra_body or {})
        self._local = threading.local()

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "extra_body": self.extra_body,
        }

    def _session(self) -> Any:
        requests = require("requests", "the OpenAI-compatible generator")

        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
        return self._local.session

    def _body(self, req: GenerationRequest) -> dict[str, Any]:
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(req.image)}},
            {"type": "text", "text": req.prompt},
        ]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self.extra_body,
        }

    @staticmethod
    def _content(payload: Mapping[str, Any]) -> str:
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"response has no choices[0].message.content: {str(payload)[:300]}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        return "" if content is None else str(content)

    def request(self, req: GenerationRequest) -> GenerationOutput:
        """One request with retries; never raises (failures are returned as `error`)."""
        requests = require("requests", "the OpenAI-compatible generator")

        body = self._body(req)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        error = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout)
                if resp.status_code == 200:
                    return GenerationOutput(text=self._content(resp.json()), attempts=attempt + 1)
                error = str(HTTPStatusError(resp.status_code, resp.text))
                if resp.status_code not in RETRY_STATUSES:
                    return GenerationOutput(error=error, attempts=attempt + 1)
                try:
                    retry_after = float(resp.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                error = f"{type(err).__name__}: {err}"
            except ValueError as err:  # malformed response body
                return GenerationOutput(error=f"malformed response: {err}", attempts=attempt + 1)
            except requests.RequestException as err:  # e.g. an invalid URL: retrying cannot help
                return GenerationOutput(error=f"{type(err).__name__}: {err}", attempts=attempt + 1)
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                time.sleep(retry_after if retry_after is not None else delay)
        return GenerationOutput(error=error, attempts=self.max_retries + 1)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[int, GenerationOutput]]:
        source = iter(enumerate(requests))
        window = 2 * self.concurrency
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="mmgen-http") as pool:
            pending: dict[Any, int] = {}

            def fill() -> None:
                while len(pending) < window:
                    nxt = next(source, None)
                    if nxt is None:
                        return
                    pending[pool.submit(self.request, nxt[1])] = nxt[0]

            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
                fill()


class ScriptedGenerator:
    """**Test double**: replays the given raw texts (cycling), or calls `script(request) -> str`. For tests and
    for exercising the parser; it does not look at the image."""

    def __init__(self, outputs: Sequence[str] | Callable[[GenerationRequest], str], name: str = "scripted"):
        self.outputs = outputs
        self.name = name
        self.calls = 0

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[int, GenerationOutput]]:
        for i, req in enumerate(requests):
            if callable(self.outputs):
                text = self.outputs(req)
            else:
                text = self.outputs[self.calls % len(self.outputs)]
            self.calls += 1
            yield i, GenerationOutput(text=text)


class ToyRuleGenerator:
    """A deterministic, rule-based annotator for the **toy world only** — a labelled stand-in for a stronger VLM so
    that the embedded demo runs offline. It reads the image's dominant colour and shape with
    [`~mixwise.mmgen.encoders.FixedFeatureEncoder`] and answers with N pairs drawn (seeded by the item's key) from a
    small bank of colour and shape questions, as the JSON a VLM is asked for. It ignores the prompt's examples."""

    name = "toy-rules"

    def __init__(self, seed: int = 0):
        from .encoders import FixedFeatureEncoder

        self.encoder = FixedFeatureEncoder()
        self.seed = int(seed)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def describe(self, image: Image.Image) -> tuple[str, str]:
        vec = self.encoder.embed_images([image])[0]
        n_colours = len(self.encoder.concepts) - 4
        colour = self.encoder.concepts[int(vec[:n_colours].argmax())]
        shape = self.encoder.concepts[n_colours + int(vec[n_colours:].argmax())]
        return colour, shape

    def pairs(self, image: Image.Image, n: int, key: tuple[str, str]) -> list[dict[str, str]]:
        colour, shape = self.describe(image)
        colours = [c for c in self.encoder.concepts[:-4] if c != colour]
        shapes = [s for s in self.encoder.concepts[-4:] if s != shape]
        rng = random.Random(int(stable_seed(self.seed, *key).generate_state(1)[0]))
        other_colour, other_shape = rng.choice(colours), rng.choice(shapes)
        bank = [
            ("What colour is the shape?", colour),
            (f"What colour is the {shape}?", colour),
            ("Which colour does the shape have?", colour),
            ("What shape is in the image?", shape),
            ("Which shape is shown?", shape),
            (f"Is the shape {colour}?", "yes"),
            (f"Is the shape {other_colour}?", "no"),
            (f"Is there a {shape} in the image?", "yes"),
            (f"Is there a {other_shape} in the image?", "no"),
            ("Describe the shape in two words.", f"{colour} {shape}"),
        ]
        return [{"Q": q, "A": a} for q, a in rng.sample(bank, min(n, len(bank)))]

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[int, GenerationOutput]]:
        for i, req in enumerate(requests):
            yield i, GenerationOutput(text=json.dumps(self.pairs(req.image, req.n_pairs, req.key)))
