"""MM-GEN step 2: targeted question–answer generation with a stronger VLM, JSON repair, resumable output.

MM-GEN (Joshi et al., 2025, arXiv:2501.04155) annotates every candidate image of a subgroup with a prompt that
holds the task description and in-context examples *from the same subgroup*, asking a stronger VLM for exactly N
diverse question–answer pairs as JSON `[{"Q": ..., "A": ...}]`.

* **Prompts** ([`build_prompt`], [`make_items`]): the task description, the subgroup's name, `num_examples`
  question–answer pairs of reference rows of that subgroup (drawn with a seed derived from the image id, subgroup
  and variant, so a restart rebuilds the same prompt), and the instruction. The examples are text only: many
  endpoints take one image per request. The **prompt id** is `p<variant>-<sha1 of the prompt text>`, so a
  changed task description or example draw is a new prompt, never confused with an old one.
* **Parsing** ([`parse_pairs`]): strict JSON first; then repairs, each counted by name: code fences stripped, the
  first JSON array (or object) extracted from surrounding prose, trailing commas removed, Python-style literals
  (single quotes, `True`/`None`), unquoted `Q`/`A` keys, a truncated array cut back to its complete objects, and
  wrappers such as `{"pairs": [...]}` or a single `{"Q", "A"}` object. Key names are matched case-insensitively
  (`Q`/`question`, `A`/`answer`); numbers become strings. Output that cannot be read is rejected with a reason;
  pairs beyond N are dropped (counted), fewer than N are kept (counted).
* **Generators** ([`Generator`]): [`LocalVLMGenerator`] (any `AutoModelForImageTextToText` by path, greedy or
  sampled, through the processor's chat template), [`OpenAIChatGenerator`] (an OpenAI-compatible
  `/v1/chat/completions` endpoint, image as a base64 data URL, a thread pool, retries with exponential backoff on
  connection errors, timeouts, 429 and 5xx), [`ToyRuleGenerator`] (a labelled, deterministic stand-in for the toy
  world's demo) and [`ScriptedGenerator`] (a test double replaying given texts).
* **Resumable output** ([`GenerationLog`]): an append-only JSONL file, one record per (image id, prompt id),
  written and `fsync`ed as soon as each output arrives. A crash loses nothing already written (a torn last line is
  cut off when the file is reopened, and counted); a restart skips every key that has an `ok` record, so no row is
  generated or written twice. Failed requests are recorded as `error` and retried on the next run. Raw texts are
  stored, and parsed when collected, so a better parser applies to old outputs too. An exclusive `flock` stops
  two processes from writing one log.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import datasets
from PIL import Image
from tqdm.auto import tqdm

from .partition import ImagePool, Partition, Retrieval
from .plan import stable_seed
from .sources import extract_fields

DEFAULT_TASK = "Answer questions about the image."


# ----------------------------------------------------------------------------------------------------------------
# Prompts and items
# ----------------------------------------------------------------------------------------------------------------


def build_prompt(task_description: str, subgroup: str, examples: Sequence[tuple[str, str]], n_pairs: int) -> str:
    """The MM-GEN generation prompt: task, subgroup, in-context examples, and the request for N JSON pairs."""
    lines = [f"Task: {task_description.strip()}", f"Image type: {subgroup}"]
    if examples:
        lines.append("Examples of question-answer pairs for images of this type:")
        lines += [json.dumps({"Q": q, "A": a}, ensure_ascii=False) for q, a in examples]
    lines.append(
        f"Write exactly {n_pairs} diverse question-answer pairs about this image in the style of the examples. "
        f'Reply with only a JSON array of {n_pairs} objects with keys "Q" and "A".'
    )
    return "\n".join(lines)


@dataclass
class GenerationItem:
    """One generation request: annotate `image_id` (row `image_index` of the pool) for `subgroup` with `prompt`."""

    image_index: int
    image_id: str
    subgroup: str
    prompt_id: str
    prompt: str
    n_pairs: int
    variant: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.image_id, self.prompt_id)


def prompt_id(prompt: str, variant: int = 0) -> str:
    return f"p{variant}-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}"


def make_items(
    retrieval: Retrieval,
    partition: Partition,
    reference: datasets.Dataset | Sequence[Mapping[str, Any]],
    task_description: str = DEFAULT_TASK,
    n_pairs: int = 3,
    num_examples: int = 3,
    seed: int = 0,
    source: str = "reference",
) -> list[GenerationItem]:
    """One [`GenerationItem`] per retrieved candidate; in-context examples from the candidate's own subgroup."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    qa_cache: dict[int, tuple[str, str]] = {}

    def qa(i: int) -> tuple[str, str]:
        if i not in qa_cache:
            fields = extract_fields(reference[i], source, i)
            qa_cache[i] = (fields.question.strip(), fields.answer.strip())
        return qa_cache[i]

    items = []
    for name, candidates in retrieval.candidates.items():
        members = partition[name].members
        for c in candidates:
            k = min(num_examples, len(members))
            rng = random.Random(int(stable_seed(seed, c.image_id, name, c.variant).generate_state(1)[0]))
            examples = [qa(i) for i in sorted(rng.sample(members, k))] if k else []
            prompt = build_prompt(task_description, name, examples, n_pairs)
            items.append(
                GenerationItem(
                    c.image_index, c.image_id, name, prompt_id(prompt, c.variant), prompt, n_pairs, c.variant
                )
            )
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):  # cannot happen with exclusive retrieval; guard the log's invariant anyway
        raise ValueError("two generation items share an (image id, prompt id) key")
    return items


# ----------------------------------------------------------------------------------------------------------------
# Parsing and repair
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ParseResult:
    """Pairs read from one generator output, the repairs applied, and what was dropped (by reason)."""

    pairs: list[dict[str, str]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    error: str | None = None  # why the whole output was rejected
    dropped: dict[str, int] = field(default_factory=dict)  # pairs dropped, by reason

    @property
    def ok(self) -> bool:
        return self.error is None


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_UNQUOTED_KEY = re.compile(r"([{,]\s*)(Q|A|q|a|question|answer|Question|Answer)\s*:")
_Q_KEYS = ("q", "question")
_A_KEYS = ("a", "answer")
_WRAPPERS = ("pairs", "qa_pairs", "qa", "questions", "data", "items", "results", "output")


def _balanced(text: str, start: int) -> tuple[str, bool]:
    """The bracketed span starting at `start` (string-aware); `(span, closed)`."""
    opener = text[start]
    stack = [{"[": "]", "{": "}"}[opener]]
    quote: str | None = None
    escaped = False
    for i in range(start + 1, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            stack.append({"[": "]", "{": "}"}[ch])
        elif ch in "]}":
            if not stack or ch != stack[-1]:
                return text[start : i + 1], False
            stack.pop()
            if not stack:
                return text[start : i + 1], True
    return text[start:], False


def _loads(text: str) -> tuple[Any, list[str]]:
    """Decode JSON, trying repairs in order; returns `(value, repairs)` or raises ValueError."""
    try:
        return json.loads(text), []
    except json.JSONDecodeError:
        pass
    attempts: list[tuple[str, Callable[[str], str]]] = [
        ("trailing comma", lambda s: _TRAILING_COMMA.sub(r"\1", s)),
        ("unquoted keys", lambda s: _UNQUOTED_KEY.sub(r'\1"\2":', s)),
    ]
    current, repairs = text, []
    for name, fix in attempts:
        fixed = fix(current)
        if fixed != current:
            current = fixed
            repairs.append(name)
            try:
                return json.loads(current), repairs
            except json.JSONDecodeError:
                pass
    try:  # single quotes, True/False/None
        value = ast.literal_eval(current)
        if isinstance(value, list | dict):
            return value, [*repairs, "python literal"]
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    raise ValueError("invalid JSON")


def _salvage_objects(text: str) -> list[Any]:
    """Complete `{...}` objects of a truncated array, in order."""
    out = []
    i = text.find("{")
    while i != -1:
        span, closed = _balanced(text, i)
        if not closed:
            break
        try:
            out.append(_loads(span)[0])
        except ValueError:
            pass
        i = text.find("{", i + len(span))
    return out


def _pick(obj: Mapping[str, Any], names: Sequence[str]) -> Any:
    for key, value in obj.items():
        if isinstance(key, str) and key.strip().lower() in names:
            return value
    return None


def parse_pairs(text: str | None, n_pairs: int) -> ParseResult:
    """Read question–answer pairs from a generator's raw output (see the module docstring for the repairs)."""
    res = ParseResult()
    if text is None or not text.strip():
        res.error = "empty output"
        return res
    body = text.strip()
    fence = _FENCE.search(body)
    if fence and fence.group(1).strip():
        body = fence.group(1).strip()
        res.repairs.append("code fence")
    starts = [i for i in (body.find("["), body.find("{")) if i != -1]
    if not starts:
        res.error = "no JSON found"
        return res
    value: Any = None
    for start in sorted(starts):  # the first array or object that decodes (prose may hold a stray bracket)
        span, closed = _balanced(body, start)
        fixes: list[str] = []
        try:
            value, fixes = _loads(span)
        except ValueError:
            if not closed and span.startswith("["):
                salvaged = _salvage_objects(span)
                if salvaged:
                    value, fixes = salvaged, ["truncated array"]
        if value is not None:
            if start > 0 or len(span) < len(body):
                res.repairs.append("extracted JSON")
            res.repairs += fixes
            break
    if value is None:
        res.error = "invalid JSON"
        return res
    if isinstance(value, dict):
        inner = _pick(value, _WRAPPERS)
        if isinstance(inner, list):
            value = inner
            res.repairs.append("wrapped in object")
        elif _pick(value, _Q_KEYS) is not None or _pick(value, _A_KEYS) is not None:
            value = [value]
            res.repairs.append("single object")
    if not isinstance(value, list):
        res.error = "not a list of pairs"
        return res
    dropped: Counter[str] = Counter()
    for element in value:
        if not isinstance(element, Mapping):
            dropped["not an object"] += 1
            continue
        q, a = _pick(element, _Q_KEYS), _pick(element, _A_KEYS)
        if isinstance(q, int | float | bool) or isinstance(a, int | float | bool):
            res.repairs.append("non-string value")
        q = "" if q is None or isinstance(q, list | dict) else str(q).strip()
        a = "" if a is None or isinstance(a, list | dict) else str(a).strip()
        if not q or not a:
            dropped["missing Q or A"] += 1
            continue
        res.pairs.append({"Q": q, "A": a})
    if len(res.pairs) > n_pairs:
        dropped["more pairs than asked"] += len(res.pairs) - n_pairs
        res.pairs = res.pairs[:n_pairs]
    res.dropped = dict(dropped)
    if not res.pairs:
        res.error = "no valid pairs"
    return res


# ----------------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------------


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
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(model, str | os.PathLike):
            path = os.fspath(model)
            self.name = f"local:{path}"
            model = AutoModelForImageTextToText.from_pretrained(path)
            processor = processor or AutoProcessor.from_pretrained(path)
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
    """An OpenAI-compatible chat endpoint (vLLM, `transformers serve`, [`mixwise.mmgen_server`], hosted APIs).

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
        import requests

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
        import requests

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
    [`~mixwise.partition.FixedFeatureEncoder`] and answers with N pairs drawn (seeded by the item's key) from a
    small bank of colour and shape questions, as the JSON a VLM is asked for. It ignores the prompt's examples."""

    name = "toy-rules"

    def __init__(self, seed: int = 0):
        from .partition import FixedFeatureEncoder

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


# ----------------------------------------------------------------------------------------------------------------
# Resumable log
# ----------------------------------------------------------------------------------------------------------------


class GenerationLog:
    """Append-only JSONL of generation records; one `ok` record per (image id, prompt id) (see module docstring).

    Use as a context manager: opening takes an exclusive lock and cuts off a torn last line.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.torn_lines = 0
        self._file: Any = None

    def __enter__(self) -> GenerationLog:
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"generation log {self.path!r} is in use by another process") from None
        self._repair_tail()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _repair_tail(self) -> None:
        f = self._file
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # a crash mid-write left a partial line: cut back to the last complete one
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
        self.torn_lines += 1

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record and make it durable (flush + fsync) before returning."""
        if self._file is None:
            raise RuntimeError("open the log with `with GenerationLog(path) as log:` before appending")
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
        """`(records, unreadable lines)`; a missing file has no records."""
        path = os.fspath(path)
        if not os.path.exists(path):
            return [], 0
        records, bad = [], 0
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    bad += 1  # torn tail (the writer cuts it off when it reopens the file)
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
        return records, bad

    @classmethod
    def latest(cls, path: str | os.PathLike) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, int]]:
        """The record that counts per key (the first `ok` one, else the last error) and read statistics."""
        records, bad = cls.read(path)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        duplicates = 0
        for rec in records:
            key = (rec["image_id"], rec["prompt_id"])
            prev = out.get(key)
            if prev is not None and prev["status"] == "ok":
                duplicates += rec["status"] == "ok"
                continue
            out[key] = rec
        return out, {"records": len(records), "unreadable_lines": bad, "duplicate_ok_records": duplicates}


@dataclass
class GenerationStats:
    """What one [`run_generation`] call did."""

    items: int = 0
    already_done: int = 0
    generated: int = 0
    errors: int = 0
    torn_lines: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def run_generation(
    items: Sequence[GenerationItem],
    pool: ImagePool,
    generator: Generator,
    log_path: str | os.PathLike,
    progress: bool = True,
) -> GenerationStats:
    """Generate every item that has no `ok` record in `log_path` yet, appending one durable record per output.

    Safe to interrupt at any point and to call again: completed keys are skipped, so nothing is generated or
    written twice.
    """
    done, _ = GenerationLog.latest(log_path)
    todo = [it for it in items if done.get(it.key, {}).get("status") != "ok"]
    stats = GenerationStats(items=len(items), already_done=len(items) - len(todo))
    if not todo:
        return stats
    name = getattr(generator, "name", type(generator).__name__)
    with GenerationLog(log_path) as log:
        stats.torn_lines = log.torn_lines
        requests = (GenerationRequest(pool.load(it.image_index), it.prompt, it.n_pairs, it.key) for it in todo)
        bar = tqdm(total=len(todo), desc=f"generating with {name}", disable=not progress)
        seen: set[int] = set()
        for j, output in generator.generate(requests):
            if j in seen or not 0 <= j < len(todo):
                raise RuntimeError(f"generator {name!r} returned request {j} twice or out of range")
            seen.add(j)
            it = todo[j]
            record: dict[str, Any] = {
                "image_id": it.image_id,
                "prompt_id": it.prompt_id,
                "subgroup": it.subgroup,
                "variant": it.variant,
                "generator": name,
                "status": "ok" if output.error is None else "error",
                "attempts": output.attempts,
                "time": round(time.time(), 3),
            }
            if output.error is None:
                record["text"] = output.text or ""
                stats.generated += 1
            else:
                record["error"] = output.error
                stats.errors += 1
            log.append(record)
            bar.update()
        bar.close()
        if len(seen) != len(todo):
            raise RuntimeError(f"generator {name!r} returned {len(seen)} outputs for {len(todo)} requests")
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Collecting rows
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationReport:
    """Outcome of every item and pair, counted by reason (nothing is dropped without being counted here)."""

    items: int = 0
    parsed: int = 0  # items whose output yielded at least one pair
    repaired: int = 0  # ... of which needed a repair
    rejected: dict[str, int] = field(default_factory=dict)  # items without pairs, by reason
    repairs: dict[str, int] = field(default_factory=dict)  # repairs applied, by name
    pairs: int = 0  # pairs kept
    pairs_dropped: dict[str, int] = field(default_factory=dict)
    short_items: int = 0  # items with fewer pairs than asked (kept)
    missing: int = 0  # items with no record at all (generation not run yet)
    stale_records: int = 0  # ok records of keys that are not among the items (another configuration)
    log: dict[str, int] = field(default_factory=dict)
    per_subgroup: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


def collect_rows(
    items: Sequence[GenerationItem], log_path: str | os.PathLike
) -> tuple[list[dict[str, Any]], GenerationReport]:
    """Parse the log's outputs for `items` into flat pair records and a [`GenerationReport`].

    Each record: `image_index`, `image_id`, `subgroup`, `prompt_id`, `generator`, `pair` (position in the output),
    `question`, `answer`, `repairs`.
    """
    latest, log_stats = GenerationLog.latest(log_path)
    report = GenerationReport(items=len(items), log=log_stats)
    wanted = {it.key for it in items}
    report.stale_records = sum(1 for k, r in latest.items() if k not in wanted and r["status"] == "ok")
    rejected: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    for it in items:
        sub = report.per_subgroup.setdefault(it.subgroup, {"items": 0, "pairs": 0, "rejected": 0})
        sub["items"] += 1
        rec = latest.get(it.key)
        if rec is None:
            report.missing += 1
            rejected["not generated"] += 1
            sub["rejected"] += 1
            continue
        if rec["status"] != "ok":
            rejected["generator error"] += 1
            sub["rejected"] += 1
            continue
        parsed = parse_pairs(rec.get("text"), it.n_pairs)
        repairs.update(parsed.repairs)
        dropped.update(parsed.dropped)
        if not parsed.ok:
            rejected[parsed.error or "rejected"] += 1
            sub["rejected"] += 1
            continue
        report.parsed += 1
        report.repaired += bool(parsed.repairs)
        report.short_items += len(parsed.pairs) < it.n_pairs
        for k, pair in enumerate(parsed.pairs):
            rows.append(
                {
                    "image_index": it.image_index,
                    "image_id": it.image_id,
                    "subgroup": it.subgroup,
                    "prompt_id": it.prompt_id,
                    "generator": rec.get("generator", ""),
                    "pair": k,
                    "question": pair["Q"],
                    "answer": pair["A"],
                    "repairs": list(parsed.repairs),
                }
            )
        sub["pairs"] += len(parsed.pairs)
    report.pairs = len(rows)
    report.rejected = dict(rejected)
    report.repairs = dict(repairs)
    report.pairs_dropped = dict(dropped)
    return rows, report
