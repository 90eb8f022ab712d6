"""Row validation: every row the training stack would reject, found before training and named.

[`validate_source`] (and `Mixture(...)`, which calls it for every source) reads every row once and checks what
TRL's trainers, collators and processors would otherwise fail on later — mid-training, at the first batch that holds
the row, naming no row:

* the row format (`messages`, or `prompt` + a reference answer), the roles (TRL's `system` / `user` /
  `assistant` / `tool`; ShareGPT's `human` / `gpt` are named as such), a non-empty question and answer;
* text that is not text: strings with invalid UTF-8 (pyarrow would raise a bare `UnicodeDecodeError` when the
  row is read) and text stored as Arrow `binary` (decoded to strings here; rows whose bytes are not UTF-8 are bad
  rows);
* images: each decodable; as many images as image placeholders in the messages (TRL's rule); images of more
  than 8 bits per sample (`I;16`, `I`, `F`), which processors saturate to white, re-encoded as 8-bit RGB
  ([`mixwise.sources.to_rgb`]) and counted as converted;
* with the processor (`processing_class=`) and the trainer's `max_length`, tokens: the chat template renders the
  row; as many image tokens as images; with `max_length` set, truncation (TRL's `keep_start`) cuts no image token
  and leaves at least one answer token; with `max_length=None` (no truncation) the row fits the tokenizer's
  `model_max_length`, or [`UNTRUNCATED_TOKEN_LIMIT`] tokens when the tokenizer declares none — a 100K-character
  row then fails here, not as an out-of-memory crash in the middle of training.

`on_error="raise"` raises a [`~mixwise.sources.DataError`] naming source, row and field for the first bad row;
`on_error="skip"` drops bad rows and counts them by reason in a [`SkipReport`] (written to `selection.json`).

**At scale.** The rows are read in contiguous chunks by `num_proc` processes (default: the cores available to this
process); the result is cached per dataset fingerprint and settings (a second run over the same data reads a small
JSON file), and under `torchrun` / `accelerate launch` one rank validates and broadcasts the result to the others.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import numpy as np

from .files import atomic_write_json
from .fingerprint import short_hash
from .sources import (
    ANSWER_COLUMNS,
    IMAGE_COLUMNS,
    DataError,
    Source,
    as_pil,
    extract_fields,
    needs_depth_conversion,
    open_image,
    row_format,
    to_rgb,
)

RULES_VERSION = 2  # bump when a check changes: cached results of older rules are not reused
UNTRUNCATED_TOKEN_LIMIT = 8192  # longest row accepted with max_length=None when the tokenizer declares no limit
MIN_ROWS_PER_PROCESS = 256  # fewer rows than this per process are checked in this process
TEXT_COLUMNS = ("messages", "prompt", *ANSWER_COLUMNS)
CACHE_ENV = "MIXWISE_CACHE"

__all__ = [
    "CACHE_ENV",
    "CheckedSource",
    "MIN_ROWS_PER_PROCESS",
    "RULES_VERSION",
    "SkipReport",
    "TokenCheck",
    "UNTRUNCATED_TOKEN_LIMIT",
    "check_source",
    "default_num_proc",
    "processor_identity",
    "trl_messages",
    "validate_source",
    "validation_cache_dir",
]


@dataclass
class SkipReport:
    """Rows dropped by validation when skipping was asked for, counted by reason; rows converted, by kind."""

    source: str
    total: int = 0
    kept: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"row", "field", "problem"}
    converted: dict[str, int] = field(default_factory=dict)  # e.g. {"16-bit or float image -> 8-bit RGB": 3}

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def to_dict(self) -> dict[str, Any]:
        out = {
            "total": self.total,
            "kept": self.kept,
            "skipped": self.skipped,
            "by_reason": dict(self.by_reason),
            "rows": list(self.rows),
        }
        if self.converted:
            out["converted"] = dict(self.converted)
        return out


@dataclass
class CheckedSource:
    """A validated source, its report, and the same rows as unindexed datasets (`pieces`) plus the positions of the
    rows in their concatenation (`order`; `None`: all rows of the single piece, in order). `Mixture` builds its
    `dataset` from pieces and order so that nothing is copied (an indexed dataset would be flattened)."""

    source: Source
    report: SkipReport
    pieces: list[datasets.Dataset]
    order: np.ndarray | None


DEPTH_CONVERSION = "16-bit or float image -> 8-bit RGB"
BINARY_CONVERSION = "binary text -> string"


def default_num_proc() -> int:
    """The cores this process may run on (`os.sched_getaffinity`, else `os.cpu_count()`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def validation_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where validation results are cached: `cache_dir`, else `$MIXWISE_CACHE/validation`, else
    `~/.cache/mixwise/validation`."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mixwise")
    return pathlib.Path(root) / "validation"


# ----------------------------------------------------------------------------------------------------------------
# TRL's image placeholder rule, and token checks with the processor
# ----------------------------------------------------------------------------------------------------------------


def trl_messages(messages: Sequence[Mapping[str, Any]], n_images: int) -> tuple[list[dict[str, Any]], int]:
    """`(messages as TRL's vision collator builds them, number of image placeholders)`.

    Mirrors `trl.data_utils.prepare_multimodal_messages` (without filling in the images): string contents become
    text parts, and the first user turn with string content gets `n_images` image parts before its text; the
    placeholders are the image parts without an `image` key in every turn but `tool` ones. TRL refuses a row whose
    placeholder count is not its image count.
    """
    out = []
    included = False
    for m in messages:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, str) and not included:
            content = [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": content}]
            included = True
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({**m, "content": content})
    placeholders = sum(
        1
        for m in out
        if m.get("content") and m.get("role") != "tool"
        for part in m["content"]
        if isinstance(part, Mapping) and part.get("type") == "image" and "image" not in part
    )
    return out, placeholders


def _tokenizer(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


def processor_identity(processing_class: Any) -> dict[str, Any]:
    """What validation results depend on in a processor: class, name, vocabulary size, chat template, image token,
    image processor settings and `model_max_length` (the validation cache key includes it)."""
    tok = _tokenizer(processing_class)
    image_processor = getattr(processing_class, "image_processor", None)
    return {
        "class": type(processing_class).__name__,
        "name": getattr(tok, "name_or_path", None),
        "vocab": len(tok) if hasattr(tok, "__len__") else None,
        "template": getattr(processing_class, "chat_template", None) or getattr(tok, "chat_template", None),
        "image_token": getattr(processing_class, "image_token", None),
        "image_processor": image_processor.to_dict() if hasattr(image_processor, "to_dict") else None,
        "model_max_length": getattr(tok, "model_max_length", None),
    }


class TokenCheck:
    """Token-level checks of rows with the processor the trainer will use.

    The row is rendered with the chat template exactly as TRL's collator renders it ([`trl_messages`]), tokenized
    without special tokens (as the collator does), and every image token is expanded to the number of tokens the
    processor gives that image: by the processor's own `_get_num_multimodal_tokens(image_sizes)` when it has one
    (checked once per process against running the processor on a real image), else by running the processor on
    each image. With `n_k` tokens for image `k`, the row's length is `len(text tokens) + Σ_k (n_k − 1)`.

    Args:
        processing_class: the processor (vision-language models) or tokenizer (text models).
        max_length: the trainer's `max_length` (`None`: no truncation).
    """

    def __init__(self, processing_class: Any, max_length: int | None):
        if max_length is not None and (
            isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        self.processing_class = processing_class
        self.tokenizer = _tokenizer(processing_class)
        if (
            getattr(processing_class, "chat_template", None) is None
            and getattr(self.tokenizer, "chat_template", None) is None
        ):
            raise ValueError("the processing class has no chat template; set one (tokenizer.chat_template = ...)")
        self.max_length = None if max_length is None else int(max_length)
        declared = getattr(self.tokenizer, "model_max_length", None)
        self.declared = int(declared) if isinstance(declared, int | float) and 0 < declared < 1e9 else None
        self.limit = self.max_length or self.declared or UNTRUNCATED_TOKEN_LIMIT
        self.image_token = getattr(processing_class, "image_token", None)
        self.image_token_id = (
            self.tokenizer.convert_tokens_to_ids(self.image_token) if self.image_token is not None else None
        )
        self.exact = not hasattr(processing_class, "_get_num_multimodal_tokens")
        self.verified = False
        self.counts: dict[tuple[int, int], int] = {}  # tokens per image, by (height, width)

    def identity(self) -> dict[str, Any]:
        return {
            "processor": processor_identity(self.processing_class),
            "max_length": self.max_length,
            "limit": self.limit,
        }

    # -- image tokens ---------------------------------------------------------------------------------------------

    def _exact_image_tokens(self, image: Any) -> int:
        out = self.processing_class(text=[self.image_token], images=[[as_pil(image)]], return_tensors="np")
        return int((np.asarray(out["input_ids"]) == self.image_token_id).sum())

    def image_tokens(self, images: Sequence[Any], sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Tokens each image expands to (`sizes` are `(height, width)`); counted once per size."""
        out = []
        for image, size in zip(images, sizes):
            size = tuple(size)
            if size not in self.counts:
                self.counts[size] = self._count(image, size)
            out.append(self.counts[size])
        return out

    def _count(self, image: Any, size: tuple[int, int]) -> int:
        if not self.exact:
            try:
                count = int(self.processing_class._get_num_multimodal_tokens(image_sizes=[list(size)])["num_image_tokens"][0])  # fmt: skip
            except Exception:  # a processor whose helper needs more than sizes: count by running it
                count = None
            if count is not None and not self.verified:
                self.verified = True
                if count != self._exact_image_tokens(image):
                    count = None
            if count is not None:
                return count
            self.exact = True
        return self._exact_image_tokens(image)

    # -- rows -----------------------------------------------------------------------------------------------------

    def render(self, messages: list[Any], add_generation_prompt: bool = False) -> Any:
        """The chat template's rendering, as TRL's collator asks for it (a list of conversations: a list)."""
        return self.processing_class.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def conversation(self, it: dict[str, Any]) -> tuple[Any, bool]:
        """`(what is rendered, add_generation_prompt)`: the messages as TRL's collator builds them (SFT), the prompt
        with the generation prompt (RL), or a plain string prompt as it is."""
        value = it["value"]
        if it["fmt"] == "rl" and isinstance(value, str):
            return value, True
        messages, _ = trl_messages(value, len(it["images"])) if it["vision"] else (list(value), 0)
        return messages, it["fmt"] == "rl"

    def template_error(self, it: dict[str, Any], err: Exception) -> DataError:
        return DataError(
            it["source"],
            it["row"],
            "messages" if it["fmt"] == "sft" else "prompt",
            f"the chat template cannot render this row ({type(err).__name__}: {err})",
            reason="chat template fails",
        )

    def render_all(self, items: Sequence[dict[str, Any]]) -> tuple[list[str | None], dict[int, DataError]]:
        """Each item's full rendering, one batched template call per kind (falling back to one row at a time to
        name the rows the template refuses)."""
        texts: list[str | None] = [None] * len(items)
        problems: dict[int, DataError] = {}
        groups: dict[bool, list[tuple[int, Any]]] = {False: [], True: []}
        for k, it in enumerate(items):
            conv, agp = self.conversation(it)
            if isinstance(conv, str):
                texts[k] = conv
            else:
                groups[agp].append((k, conv))
        for agp, group in groups.items():
            if not group:
                continue
            try:
                rendered = self.render([conv for _, conv in group], add_generation_prompt=agp)
                for (k, _), text in zip(group, rendered):
                    texts[k] = text
            except Exception:  # jinja2 TemplateError (e.g. a template's raise_exception), TypeError, ...
                for k, conv in group:
                    try:
                        texts[k] = self.render(conv, add_generation_prompt=agp)
                    except Exception as err:
                        problems[k] = self.template_error(items[k], err)
        return texts, problems

    def check(self, items: Sequence[dict[str, Any]]) -> dict[int, DataError]:
        """Check rows; each item: `{"source", "row", "fmt", "value"` (messages or prompt)`, "images", "sizes",
        "vision", "images_read"}`. Returns `{position in items: DataError}` for the bad ones."""
        texts, problems = self.render_all(items)
        todo = [k for k in range(len(items)) if k not in problems]
        ids = (
            self.tokenizer([texts[k] for k in todo], add_special_tokens=False, verbose=False)["input_ids"]
            if todo
            else []
        )
        for k, full in zip(todo, ids):
            err = self.check_tokens(items[k], full)
            if err is not None:
                problems[k] = err
        return problems

    def prompt_ids(self, it: dict[str, Any]) -> list[int]:
        """Tokens of an SFT row's rendering up to its first answer, with the generation prompt."""
        messages, _ = self.conversation(it)
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), 0)
        if first == 0:
            return []
        text = self.render(messages[:first], add_generation_prompt=True)
        return self.tokenizer([text], add_special_tokens=False, verbose=False)["input_ids"][0]

    def check_tokens(self, it: dict[str, Any], full: list[int]) -> DataError | None:
        name, row, images = it["source"], it["row"], it["images"]
        text_field = "messages" if it["fmt"] == "sft" else "prompt"
        positions = (
            [i for i, t in enumerate(full) if t == self.image_token_id] if self.image_token_id is not None else []
        )
        if self.image_token_id is None:
            images = []  # a tokenizer without an image token: the images add no tokens it knows of
        if not it.get("images_read", True):  # images not read (check_images=False): one token per image token
            counts = [1] * len(positions)
        else:
            if len(positions) != len(images):
                return DataError(
                    name,
                    row,
                    "images",
                    f"{len(images)} image(s) but the rendered conversation holds {len(positions)} image token(s) "
                    f"({self.image_token!r}); is the image token written in the text?",
                    reason="image tokens != images",
                )
            counts = self.image_tokens(images, it["sizes"])
        extra = np.cumsum([0] + [c - 1 for c in counts])
        length = len(full) + int(extra[-1])
        if self.max_length is None:
            if length > self.limit:
                origin = (
                    f"the tokenizer's model_max_length={self.declared}"
                    if self.declared
                    else f"mixwise.validation.UNTRUNCATED_TOKEN_LIMIT={UNTRUNCATED_TOKEN_LIMIT}"
                )
                return DataError(
                    name,
                    row,
                    text_field,
                    f"{length} tokens with max_length=None (no truncation): over {origin}; set max_length to "
                    "truncate, or to a larger value to train on rows this long",
                    reason="too many tokens (max_length=None)",
                )
            return None
        if length <= self.max_length:
            return None
        if positions:
            end = positions[-1] + int(extra[-1]) + 1  # one past the last image's last token
            if end > self.max_length:
                return DataError(
                    name,
                    row,
                    "images",
                    f"truncation to max_length={self.max_length} cuts image tokens (the images end at token "
                    f"{end} of {length}); raise max_length",
                    reason="image tokens truncated",
                )
        if it["fmt"] == "sft":  # only a truncated row needs its prompt rendered
            try:
                prompt = self.prompt_ids(it)
            except Exception as err:
                return self.template_error(it, err)
            common = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
            start = common + int(extra[sum(1 for p in positions if p < common)])
            if start >= self.max_length:
                return DataError(
                    name,
                    row,
                    text_field,
                    f"answer truncated away: the prompt takes {start} of max_length={self.max_length} tokens "
                    f"({length} in all), so no answer token is trained on",
                    reason="answer truncated away",
                )
        return None


# ----------------------------------------------------------------------------------------------------------------
# Scanning rows (in worker processes)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ScanSettings:
    """What one scan needs in every worker (inherited by fork, pickled otherwise)."""

    name: str
    raw: datasets.Dataset  # the columns to read, in Arrow format (images undecoded)
    fmt: str
    vision: bool
    check_images: bool
    binary_columns: list[str]
    tokens: TokenCheck | None
    stop_at_first: bool


@dataclass
class ScanResult:
    total: int
    problems: list[tuple[int, str, str, str]]  # (row, field, problem, reason), sorted by row
    depth_rows: list[int]
    complete: bool = True


_SETTINGS: ScanSettings | None = None  # the scan a worker process runs (set before forking, or by _init)


def _init(settings: ScanSettings) -> None:
    global _SETTINGS
    _SETTINGS = settings


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8")
    if isinstance(value, list):
        return [_decode_bytes(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode_bytes(v) for k, v in value.items()}
    return value


def _read_rows(table: Any, start: int, name: str) -> tuple[list[dict[str, Any] | None], dict[int, DataError]]:
    """Rows of an Arrow table as Python dicts; a row whose strings are not valid UTF-8 is `None`, with its error."""
    try:
        return table.to_pylist(), {}
    except UnicodeDecodeError:
        pass
    rows: list[dict[str, Any] | None] = []
    bad: dict[int, DataError] = {}
    for j in range(table.num_rows):
        one = table.slice(j, 1)
        try:
            rows.append(one.to_pylist()[0])
        except UnicodeDecodeError as err:
            column = next(c for c in one.column_names if not _decodes(one.column(c)))
            rows.append(None)
            bad[j] = DataError(name, start + j, column, f"invalid UTF-8 in a string ({err})", reason="invalid UTF-8")
    return rows, bad


def _decodes(column: Any) -> bool:
    try:
        column.to_pylist()
        return True
    except UnicodeDecodeError:
        return False


def inspect_image(value: Any) -> tuple[str | None, tuple[int, int] | None, bool]:
    """`(problem or None, (height, width), needs 8-bit conversion)` of one image value, decoding it fully."""
    try:
        with open_image(value) as im:
            im.load()
            return None, (im.size[1], im.size[0]), needs_depth_conversion(im)
    except Exception as err:  # PIL raises several types for corrupt or truncated data
        if isinstance(value, Mapping) and value.get("bytes") is None and value.get("path") is None:
            return "image has neither bytes nor path", None, False
        if not isinstance(value, Mapping | str | bytes | bytearray | memoryview) and not hasattr(value, "load"):
            return f"unsupported image value of type {type(value).__name__}", None, False
        return f"unreadable or corrupt image ({type(err).__name__}: {err})", None, False


def image_size(value: Any) -> tuple[int, int] | None:
    """`(height, width)` from an image's header, without decoding it (`None` when unreadable)."""
    try:
        with open_image(value) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def scan_rows(settings: ScanSettings, start: int, stop: int) -> tuple[list[tuple[int, str, str, str]], list[int]]:
    """Check rows `[start, stop)`: `(problems, rows whose images need 8-bit conversion)`."""
    table = settings.raw[start:stop]
    rows, bad = _read_rows(table, start, settings.name)
    depth: list[int] = []
    pending: list[dict[str, Any]] = []
    for j, row in enumerate(rows):
        if row is None:
            continue
        i = start + j
        try:
            for c in settings.binary_columns:
                try:
                    row[c] = _decode_bytes(row[c])
                except UnicodeDecodeError as err:
                    raise DataError(
                        settings.name, i, c, f"binary text that is not valid UTF-8 ({err})", reason="invalid UTF-8"
                    ) from None
            fields = extract_fields(row, settings.name, i)
            value = row["messages"] if settings.fmt == "sft" else row["prompt"]
            if settings.vision and not isinstance(value, str):
                _, placeholders = trl_messages(value, len(fields.images))
                if placeholders != len(fields.images):
                    raise DataError(
                        settings.name,
                        i,
                        "images",
                        f"{len(fields.images)} image(s) but {placeholders} image placeholder(s) in the "
                        f"{'messages' if settings.fmt == 'sft' else 'prompt'}; TRL's collator refuses the row",
                        reason="images != image placeholders",
                    )
            sizes: list[tuple[int, int]] = []
            images_read = True
            for img in fields.images:
                if settings.check_images:
                    problem, size, convert = inspect_image(img)
                    if problem is not None:
                        raise DataError(settings.name, i, "images", problem, reason="corrupt image")
                    if convert and (not depth or depth[-1] != i):
                        depth.append(i)
                elif settings.tokens is not None:  # no decoding asked for: the size from the header
                    size = image_size(img)
                    images_read = images_read and size is not None
                else:
                    continue
                sizes.append(size)
            if settings.tokens is not None:
                pending.append(
                    {
                        "source": settings.name,
                        "row": i,
                        "fmt": settings.fmt,
                        "value": value,
                        "images": fields.images,
                        "sizes": sizes,
                        "vision": settings.vision,
                        "images_read": images_read,
                    }  # fmt: skip
                )
        except DataError as err:
            bad[j] = err
        if settings.stop_at_first and bad:
            break
    if pending:
        for k, err in settings.tokens.check(pending).items():
            bad[pending[k]["row"] - start] = err
    problems = sorted((start + j, e.field, e.problem, e.reason) for j, e in bad.items())
    if settings.stop_at_first and problems:
        depth = [r for r in depth if r < problems[0][0]]
    return problems, depth


def _scan_job(bounds: tuple[int, int]) -> tuple[int, list[tuple[int, str, str, str]], list[int]]:
    problems, depth = scan_rows(_SETTINGS, *bounds)
    return bounds[1] - bounds[0], problems, depth


def run_scan(settings: ScanSettings, num_proc: int, batch_size: int, progress: bool) -> ScanResult:
    """Scan every row, in `num_proc` processes when there are enough rows; stop at the first bad row when asked."""
    from tqdm.auto import tqdm

    n = len(settings.raw)
    workers = max(1, min(num_proc, math.ceil(n / MIN_ROWS_PER_PROCESS)))
    # Many small chunks keep the processes busy to the end (the last chunk is the only wait); single reads of at
    # most 8192 rows keep memory flat and let a raise stop early.
    chunk = max(32, min(8192, math.ceil(n / (workers * 16)))) if workers > 1 else batch_size
    bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    problems: list[tuple[int, str, str, str]] = []
    depth: list[int] = []
    bar = tqdm(total=n, desc=f"checking {settings.name}", disable=not progress, unit="row")
    complete = True
    try:
        if workers == 1:
            results = (_run_local(settings, b) for b in bounds)
            pool = None
        else:
            methods = multiprocessing.get_all_start_methods()
            if "fork" in methods:
                _init(settings)  # inherited by the forked workers: nothing is pickled
                pool = multiprocessing.get_context("fork").Pool(workers)
            else:
                pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init, initargs=(settings,))
            results = pool.imap(_scan_job, bounds)
        for count, found, converted in results:
            bar.update(count)
            problems += found
            depth += converted
            if settings.stop_at_first and problems:
                complete = False
                break
    finally:
        bar.close()
        if workers > 1:
            pool.terminate()
            pool.join()
            _init(None)
    if not complete:
        depth = [r for r in depth if r < problems[0][0]]
    return ScanResult(total=n, problems=problems, depth_rows=depth, complete=complete)


def _run_local(settings: ScanSettings, bounds: tuple[int, int]) -> tuple[int, list, list]:
    problems, depth = scan_rows(settings, *bounds)
    return bounds[1] - bounds[0], problems, depth


# ----------------------------------------------------------------------------------------------------------------
# One rank validates, the others receive the result
# ----------------------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from .distributed import init_state

        init_state()
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def on_main_then_share(compute: Any) -> Any:
    """`compute()` on rank 0 only, its result (or its exception) on every rank. One collective per call, on every
    rank, whatever happens on rank 0."""
    rank, world = _world()
    if world == 1:
        return compute()
    import torch.distributed as dist

    from .distributed import long_wait_group

    group = long_wait_group()  # the other ranks may wait as long as validation takes
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as err:  # every rank must raise it, not wait forever
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0, group=group)
    status, value = box[0]
    if status == "error":
        raise value
    return value


# ----------------------------------------------------------------------------------------------------------------
# validate_source
# ----------------------------------------------------------------------------------------------------------------


def _has_binary(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        return any(_has_binary(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return _has_binary(arrow_type.value_type)
    return False


def _as_string_type(arrow_type: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type):
        return pa.large_string()
    if pa.types.is_struct(arrow_type):
        return pa.struct([pa.field(f.name, _as_string_type(f.type)) for f in arrow_type])
    if pa.types.is_list(arrow_type):
        return pa.list_(_as_string_type(arrow_type.value_type))
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(_as_string_type(arrow_type.value_type))
    return arrow_type


def _decode_or_none(value: Any) -> Any:
    try:
        return _decode_bytes(value)
    except UnicodeDecodeError:
        return None  # a bad row: dropped by skip, or raised before this is used


def decompose(ds: datasets.Dataset) -> tuple[datasets.Dataset, np.ndarray | None]:
    """`(the dataset without its indices mapping, the positions of its rows in it)`; `None` positions when `ds` has
    no indices mapping (then the dataset is `ds` itself)."""
    indices = getattr(ds, "_indices", None)
    table = getattr(ds, "_data", None)
    if indices is None or table is None:
        return ds, None
    base = datasets.Dataset(
        table, info=ds.info.copy(), split=ds.split, fingerprint=short_hash([ds._fingerprint, "base"], 16)
    )
    return base, indices.column(0).to_numpy().astype(np.int64)


def _scan_key(source: Source, columns: list[str], check_images: bool, tokens: TokenCheck | None) -> str:
    from . import __version__

    return short_hash(
        {
            "fingerprint": source.fingerprint,
            "rows": len(source.dataset),
            "columns": columns,
            "features": str(source.dataset.features),
            "check_images": check_images,
            "tokens": tokens.identity() if tokens is not None else None,
            "rules": RULES_VERSION,
            "version": __version__,
        },
        24,
    )


def _read_cache(path: pathlib.Path) -> ScanResult | None:
    import json

    try:
        with open(path) as f:
            d = json.load(f)
        return ScanResult(
            total=int(d["total"]),
            problems=[(int(r), f, p, reason) for r, f, p, reason in d["problems"]],
            depth_rows=[int(r) for r in d["depth_rows"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: pathlib.Path, result: ScanResult) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            path,
            {"total": result.total, "problems": [list(p) for p in result.problems], "depth_rows": result.depth_rows},
            indent=None,
        )
    except OSError:  # a read-only cache location only costs the next run its speed
        pass


def check_source(
    source: Source,
    on_error: Literal["raise", "skip"] = "raise",
    check_images: bool = True,
    batch_size: int = 256,
    *,
    processing_class: Any = None,
    max_length: int | None = None,
    num_proc: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> CheckedSource:
    """[`validate_source`], returning also the unindexed pieces the validated rows come from (see
    [`CheckedSource`]). Same arguments."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}")
    ds = source.dataset
    try:
        fmt = row_format(ds.column_names)
    except DataError as err:
        raise DataError(source.name, None, err.field, err.problem) from None
    columns = ds.column_names
    arrow_schema = ds.features.arrow_schema
    binary = [c for c in TEXT_COLUMNS if c in ds.column_names and _has_binary(arrow_schema.field(c).type)]
    tokens = TokenCheck(processing_class, max_length) if processing_class is not None else None
    report = SkipReport(source=source.name, total=len(ds))
    if len(ds) == 0:
        return CheckedSource(source, report, [ds], None)
    key = _scan_key(source, columns, check_images, tokens)
    path = validation_cache_dir(cache_dir) / f"{key}.json"

    def compute() -> ScanResult:
        if cache:
            hit = _read_cache(path)
            if hit is not None and hit.total == len(ds):
                return hit
        settings = ScanSettings(
            name=source.name,
            # Read Arrow rows directly: images stay undecoded ({"bytes", "path"}), so a corrupt one is reported,
            # not raised, and nothing is cast or copied.
            raw=ds.select_columns(columns).with_format("arrow"),
            fmt=fmt,
            vision=any(c in ds.column_names for c in IMAGE_COLUMNS),
            check_images=check_images,
            binary_columns=binary,
            tokens=tokens,
            stop_at_first=on_error == "raise",
        )
        show = len(ds) >= 10_000 if progress is None else progress
        result = run_scan(settings, num_proc or default_num_proc(), batch_size, show)
        if cache and result.complete:
            _write_cache(path, result)
        return result

    result = on_main_then_share(compute)
    if on_error == "raise" and result.problems:
        row, field_name, problem, reason = result.problems[0]
        raise DataError(source.name, row, field_name, problem, reason)
    return _apply(source, result, report, binary)


def _apply(source: Source, result: ScanResult, report: SkipReport, binary: list[str]) -> CheckedSource:
    """The validated source from a scan: binary text decoded, deep images converted, bad rows dropped."""
    ds = source.dataset
    n = len(ds)
    bad = sorted({p[0] for p in result.problems})
    for row, field_name, problem, reason in result.problems:
        report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
        report.rows.append({"row": row, "field": field_name, "problem": problem})
    report.kept = n - len(bad)
    if report.kept == 0:
        reasons = ", ".join(f"{r}: {c}" for r, c in sorted(report.by_reason.items(), key=lambda x: -x[1]))
        raise DataError(
            source.name, None, "rows", f"validation skipped every one of its {n} rows ({reasons}); nothing is left"
        )
    if not bad and not binary and not result.depth_rows:
        return CheckedSource(source, report, [ds], None)
    base, positions = decompose(ds)
    positions = np.arange(n, dtype=np.int64) if positions is None else positions.copy()
    if binary:
        base = _decode_binary_columns(base, binary)
        report.converted[BINARY_CONVERSION] = n
    pieces = [base]
    if result.depth_rows:
        rows = np.asarray(result.depth_rows, dtype=np.int64)
        pieces.append(_to_8bit(base.select(positions[rows]), source.name))
        positions[rows] = len(base) + np.arange(len(rows))
        report.converted[DEPTH_CONVERSION] = len(rows)
    keep = np.ones(n, dtype=bool)
    keep[bad] = False
    order = positions[keep]
    if not binary and not result.depth_rows:  # rows dropped only: the same dataset (and fingerprint) as before
        kept = ds.select([i for i in range(n) if keep[i]])
    else:
        whole = datasets.concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]
        kept = whole.select(order)
    validated = Source(source.name, kept, split=source.split, role=source.role, subtask_column=source.subtask_column)
    if len(pieces) == 1 and np.array_equal(order, np.arange(len(base))):
        order = None
    return CheckedSource(validated, report, pieces, order)


def _decode_binary_columns(ds: datasets.Dataset, columns: list[str]) -> datasets.Dataset:
    """`ds` (unindexed) with its binary text `columns` decoded to strings (`None` where the bytes are not UTF-8:
    those rows are bad rows); the other columns are not copied."""
    import pyarrow as pa
    from datasets.table import InMemoryTable

    table = ds.data.table
    for c in columns:
        values = [_decode_or_none(v) for v in table.column(c).to_pylist()]
        arrow_type = _as_string_type(table.schema.field(c).type)
        k = table.schema.get_field_index(c)
        table = table.set_column(k, pa.field(c, arrow_type), pa.array(values, type=arrow_type))
    info = ds.info.copy()
    info.features = datasets.Features.from_arrow_schema(table.schema)
    table = table.replace_schema_metadata(None)
    fingerprint = short_hash([ds._fingerprint, "decoded", columns], 16)
    return datasets.Dataset(InMemoryTable(table), info=info, split=ds.split, fingerprint=fingerprint)


def _to_8bit(ds: datasets.Dataset, name: str) -> datasets.Dataset:
    """The rows of `ds` with every image of more than 8 bits per sample re-encoded as 8-bit RGB ([`to_rgb`])."""
    columns = [c for c in IMAGE_COLUMNS if c in ds.column_names]

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for c in columns:
            value = row[c]
            if isinstance(value, list):
                out[c] = [to_rgb(im) if needs_depth_conversion(im) else im for im in value]
            elif value is not None:
                out[c] = to_rgb(value) if needs_depth_conversion(value) else value
        return out

    return ds.map(convert, features=ds.features, desc=f"8-bit images of {name}", load_from_cache_file=False)


def validate_source(
    source: Source,
    on_error: Literal["raise", "skip"] = "raise",
    check_images: bool = True,
    batch_size: int = 256,
    *,
    processing_class: Any = None,
    max_length: int | None = None,
    num_proc: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> tuple[Source, SkipReport]:
    """Check every row of a source for what the training stack would reject (see the module docstring).

    With `on_error="raise"` the first bad row raises a [`~mixwise.sources.DataError`] naming source, row and field.
    With `on_error="skip"` bad rows are dropped, counted by reason in the returned [`SkipReport`] (which plans
    write to the manifest), and a filtered source is returned; a source left with no row raises, saying why.
    Either way, text stored as `binary` is decoded and images of more than 8 bits per sample are re-encoded as
    8-bit RGB in the returned source (counted in `report.converted`).

    Args:
        source: the source.
        on_error: `"raise"` or `"skip"`.
        check_images: decode every image (`False`: images are not read).
        batch_size: rows per read.
        processing_class: the processor (or tokenizer) the trainer uses: enables the token checks.
        max_length: the trainer's `max_length` (`None`: no truncation; rows must then fit the tokenizer's
            `model_max_length`, or [`UNTRUNCATED_TOKEN_LIMIT`] tokens).
        num_proc: processes reading rows (default: the cores available).
        cache: reuse (and write) the result cached for this dataset fingerprint and these settings.
        cache_dir: where (default: [`validation_cache_dir`]).
        progress: a progress bar (default: for 10,000 rows or more).
    """
    checked = check_source(
        source,
        on_error,
        check_images,
        batch_size,
        processing_class=processing_class,
        max_length=max_length,
        num_proc=num_proc,
        cache=cache,
        cache_dir=cache_dir,
        progress=progress,
    )
    return checked.source, checked.report
