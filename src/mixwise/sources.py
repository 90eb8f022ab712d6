"""Sources: named datasets, the Q/A/I field adapters, and row validation.

A **source** is a name plus a `datasets.Dataset` (plus an optional split and role). mixwise reads two row
formats, both TRL's:

* SFT (vision) rows: `images` (list of images) + `messages` (a conversation whose user content may mix
  `{"type": "image"}` and `{"type": "text", "text": ...}` parts);
* RL rows: `prompt` (a string or a conversation) + `images` + a reference `answer` (or `solution`).

A text-only row simply has no `images`. Selectors need three fields of every row — **Q** (the user text),
**A** (the assistant text) and **I** (the images) — and [`extract_fields`] derives them from either format.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
from PIL import Image
from tqdm.auto import tqdm

ANSWER_COLUMNS = ("answer", "solution", "completion")
IMAGE_COLUMNS = ("images", "image")


class DataError(ValueError):
    """A row of a source cannot be used. The message names the source, the row and the field."""

    def __init__(self, source: str, row: int | None, field: str, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = f"source '{source}'" + (f", row {row}" if row is not None else "") + f", field '{field}'"
        super().__init__(f"{where}: {problem}")


@dataclass
class Source:
    """A named candidate (pool) or target dataset.

    Args:
        name: unique name, used in plans, manifests and logs.
        dataset: the rows, in SFT or RL format (see module docstring).
        split: which split of the original data this is (informational, written to the manifest).
        role: `"pool"` for candidate training data, `"target"` for a validation set to get better at.
        subtask_column: for targets with subtasks, the column holding the subtask name.
    """

    name: str
    dataset: datasets.Dataset
    split: str | None = None
    role: Literal["pool", "target"] = "pool"
    subtask_column: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a source needs a non-empty string name, got {self.name!r}")
        if not isinstance(self.dataset, datasets.Dataset):
            raise TypeError(
                f"source '{self.name}': expected a datasets.Dataset, got {type(self.dataset).__name__} "
                "(pick a split of a DatasetDict, e.g. dataset['train'])"
            )
        if self.role not in ("pool", "target"):
            raise ValueError(f"source '{self.name}': role must be 'pool' or 'target', got {self.role!r}")

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def fingerprint(self) -> str:
        return self.dataset._fingerprint


def as_sources(
    sources: Mapping[str, datasets.Dataset] | Sequence[Source] | Iterable[Source], role: str = "pool"
) -> list[Source]:
    """Normalize `{name: Dataset}` or a sequence of [`Source`] to a list of sources with unique names."""
    if isinstance(sources, Mapping):
        out = [s if isinstance(s, Source) else Source(name, s, role=role) for name, s in sources.items()]
    else:
        out = list(sources)
        for s in out:
            if not isinstance(s, Source):
                raise TypeError(f"expected Source objects or a {{name: Dataset}} mapping, got {type(s).__name__}")
    names = [s.name for s in out]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ValueError(f"source names must be unique; repeated: {dupes}")
    if not out:
        raise ValueError("no sources given")
    return out


def named_datasets(
    data: Mapping[str, datasets.Dataset | Source] | Sequence[Source], role: str = "source"
) -> dict[str, datasets.Dataset]:
    """`{name: Dataset}` from `{name: Dataset or Source}` or a sequence of [`Source`] (`role` names them in errors)."""
    if isinstance(data, Mapping):
        out = {}
        for name, ds in data.items():
            ds = ds.dataset if isinstance(ds, Source) else ds
            if not isinstance(ds, datasets.Dataset):
                raise TypeError(f"{role} '{name}': expected a datasets.Dataset, got {type(ds).__name__}")
            out[str(name)] = ds
        return out
    out = {}
    for s in data:
        if not isinstance(s, Source):
            raise TypeError(
                f"expected Source objects or a {{name: Dataset}} mapping of {role}s, got {type(s).__name__}"
            )
        out[s.name] = s.dataset
    return out


def split_spec(spec: str) -> tuple[str | None, str]:
    """`"name=path"` → `("name", "path")`; a plain path → `(None, path)`."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return None, spec


def load_source(
    path: str | os.PathLike, name: str | None = None, split: str | None = "train", role: str = "pool"
) -> Source:
    """Load a source: a `save_to_disk` folder (a `Dataset`, or a `DatasetDict` whose `split` is taken), or a hub
    dataset id (`datasets.load_dataset(path, split=split)`). `"name=path"` renames it; by default the source is
    named after the folder. A `DatasetDict` with `split=None` gives its `validation` split, else its `test` split
    (the convention for targets, [`load_target`])."""
    spec = os.fspath(path)
    given, spec = split_spec(spec)
    name = name or given
    p = pathlib.Path(spec)
    if p.exists():
        ds = datasets.load_from_disk(str(p))
    elif p.is_absolute() or spec.startswith(".") or spec.count("/") > 1:
        raise FileNotFoundError(f"{role} directory {spec!r} does not exist")
    else:  # a hub dataset id
        try:
            ds = datasets.load_dataset(spec, split=split or "validation")
        except Exception as err:  # offline, unknown id, ...: say both things that were tried
            raise FileNotFoundError(
                f"{role} {spec!r} is neither a local dataset folder nor a dataset on the hub ({type(err).__name__}: {err})"
            ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = next((s for s in ("validation", "test") if s in ds), None)
            if split is None:
                raise KeyError(f"{role} {spec!r} has neither a validation nor a test split ({list(ds)}); pass a split")
        if split not in ds:
            raise KeyError(f"{role} {spec!r} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return Source(name or p.name or pathlib.Path(spec.rstrip("/")).name, ds, split=split, role=role)


def load_target(path: str | os.PathLike, split: str | None = None, name: str | None = None) -> Source:
    """A target (validation set): [`load_source`] with role `target`; a `DatasetDict`'s `validation` split by
    default, else its `test` split."""
    return load_source(path, name=name, split=split, role="target")


# ----------------------------------------------------------------------------------------------------------------
# Field adapters
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Fields:
    """The three fields selectors read: Q (user text), A (assistant / reference text), I (images)."""

    question: str
    answer: str
    images: list[Any] = field(default_factory=list)


def _content_text(content: Any) -> str:
    """Text of a message's content: a plain string, or the text parts of a list of parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, Mapping):
            if part.get("type", "text") == "text" and part.get("text"):
                texts.append(part["text"])
        elif isinstance(part, str):
            texts.append(part)
    return "\n".join(texts)


def _role_text(messages: Sequence[Mapping[str, Any]], role: str) -> str:
    return "\n".join(t for m in messages if m.get("role") == role and (t := _content_text(m.get("content"))))


def row_images(row: Mapping[str, Any]) -> list[Any]:
    """The images of a row (`images` list or a single `image`); empty for text-only rows."""
    for col in IMAGE_COLUMNS:
        if col in row and row[col] is not None:
            value = row[col]
            return list(value) if isinstance(value, list | tuple) else [value]
    return []


def as_pil(value: Any) -> Image.Image:
    """A decoded RGB image from a PIL image, an undecoded `datasets.Image` dict (`bytes`/`path`) or a file path."""
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        value = io.BytesIO(data) if data is not None else path
    with Image.open(value) as im:
        return im.convert("RGB")


def row_format(columns: Iterable[str]) -> Literal["sft", "rl"]:
    """`"sft"` when the rows carry `messages`, `"rl"` when they carry `prompt` and a reference answer."""
    columns = set(columns)
    if "messages" in columns:
        return "sft"
    if "prompt" in columns and any(c in columns for c in ANSWER_COLUMNS):
        return "rl"
    raise DataError(
        "?",
        None,
        "messages",
        f"rows need either 'messages' (SFT) or 'prompt' + one of {list(ANSWER_COLUMNS)} (RL); columns are {sorted(columns)}",
    )


def extract_fields(row: Mapping[str, Any], source: str = "?", index: int | None = None) -> Fields:
    """Derive Q, A and I from a row in SFT or RL format.

    Raises:
        DataError: naming the source, row and field when Q or A cannot be found or A is empty.
    """
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list | tuple) or not messages:
            raise DataError(source, index, "messages", "expected a non-empty list of messages")
        question = _role_text(messages, "user")
        answer = _role_text(messages, "assistant")
        answer_field = "messages"
    elif "prompt" in row:
        prompt = row["prompt"]
        question = prompt if isinstance(prompt, str) else _role_text(prompt or [], "user")
        answer_field = next((c for c in ANSWER_COLUMNS if c in row), None)
        if answer_field is None:
            raise DataError(
                source, index, "answer", f"RL row has no reference answer column (one of {ANSWER_COLUMNS})"
            )
        answer = row[answer_field]
        answer = "" if answer is None else str(answer)
    else:
        raise DataError(source, index, "messages", f"row has neither 'messages' nor 'prompt' (keys: {sorted(row)})")
    if not question.strip():
        raise DataError(source, index, "messages" if "messages" in row else "prompt", "no user text found")
    if not answer.strip():
        raise DataError(source, index, answer_field, "empty answer")
    return Fields(question=question, answer=answer, images=row_images(row))


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SkipReport:
    """Rows dropped by validation when skipping was asked for, counted by reason."""

    source: str
    total: int = 0
    kept: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"row", "field", "problem"}

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "skipped": self.skipped,
            "by_reason": dict(self.by_reason),
            "rows": list(self.rows),
        }


def _check_image(value: Any) -> str | None:
    """Return a problem description if an image cannot be decoded, else None."""
    try:
        if isinstance(value, Image.Image):
            value.load()
            return None
        if isinstance(value, Mapping):  # undecoded datasets.Image: {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
            if data is None and path is None:
                return "image has neither bytes nor path"
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.load()
            return None
        if isinstance(value, str):
            with Image.open(value) as im:
                im.load()
            return None
        return f"unsupported image value of type {type(value).__name__}"
    except Exception as err:  # PIL raises several types for corrupt data
        return f"unreadable or corrupt image ({type(err).__name__}: {err})"


def validate_source(
    source: Source,
    on_error: Literal["raise", "skip"] = "raise",
    check_images: bool = True,
    batch_size: int = 256,
) -> tuple[Source, SkipReport]:
    """Check every row of a source: a known format, non-empty Q and A, decodable images.

    With `on_error="raise"` the first bad row raises a [`DataError`] naming source, row and field. With
    `on_error="skip"` bad rows are dropped, counted by reason in the returned [`SkipReport`] (which plans write to
    the manifest), and a filtered source is returned.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    ds = source.dataset
    try:
        row_format(ds.column_names)
    except DataError as err:
        raise DataError(source.name, None, err.field, err.problem) from None
    report = SkipReport(source=source.name, total=len(ds))
    bad: list[int] = []
    # Read Arrow rows directly: images stay undecoded ({"bytes", "path"}), so a corrupt one is reported, not
    # raised, and nothing is cast or copied.
    columns = ds.column_names if check_images else [c for c in ds.column_names if c not in IMAGE_COLUMNS]
    raw = ds.select_columns(columns).with_format("arrow")
    for start in tqdm(range(0, len(ds), batch_size), desc=f"checking {source.name}", disable=len(ds) < 10_000):
        for j, row in enumerate(raw[start : start + batch_size].to_pylist()):
            i = start + j
            problem: DataError | None = None
            try:
                fields = extract_fields(row, source.name, i)
                if check_images:
                    for img in fields.images:
                        msg = _check_image(img)
                        if msg is not None:
                            problem = DataError(source.name, i, "images", msg)
                            break
            except DataError as err:
                problem = err
            if problem is None:
                continue
            if on_error == "raise":
                raise problem
            bad.append(i)
            reason = "corrupt image" if problem.field in IMAGE_COLUMNS else problem.problem
            report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
            report.rows.append({"row": i, "field": problem.field, "problem": problem.problem})
    report.kept = len(ds) - len(bad)
    if not bad:
        return source, report
    bad_set = set(bad)
    kept = ds.select([i for i in range(len(ds)) if i not in bad_set])
    return Source(
        source.name, kept, split=source.split, role=source.role, subtask_column=source.subtask_column
    ), report
