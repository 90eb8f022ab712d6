"""Sources: named datasets, the Q/A/I field adapters, and row validation.

A **source** is a name plus a `datasets.Dataset` (plus an optional split and role). mixwise reads two row
formats, both TRL's:

* SFT (vision) rows: `images` (list of images) + `messages` (a conversation whose user content may mix
  `{"type": "image"}` and `{"type": "text", "text": ...}` parts);
* RL rows: `prompt` (a string or a conversation) + `images` + a reference `answer` (or `solution`).

A text-only row simply has no `images`. Selectors need three fields of every row — **Q** (the user text),
**A** (the assistant text) and **I** (the images) — and [`extract_fields`] derives them from either format.

Messages use TRL's roles (`system`, `user`, `assistant`, `tool`); ShareGPT-style data (`conversations` of
`{"from": "human" | "gpt", "value": ...}`) is converted by [`from_sharegpt`]. Images are read as RGB by [`as_pil`],
which converts every PIL mode the way the processors do (transparency onto white) and scales 16-bit, 32-bit and
float images to 8 bits instead of saturating them. Row validation lives in [`mixwise.validation`].
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import datasets.table
import numpy as np
from PIL import Image

ANSWER_COLUMNS = ("answer", "solution", "completion")
IMAGE_COLUMNS = ("images", "image")
CHAT_ROLES = ("system", "user", "assistant", "tool")  # the roles TRL's trainers accept (trl.data_utils)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Files `load_source` reads with `datasets.load_dataset(<builder>, data_files=...)`, by suffix.
FILE_BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
ACCEPTED_SOURCES = (
    "a save_to_disk folder (Dataset or DatasetDict), a data file (" + ", ".join(FILE_BUILDERS) + "), a folder of "
    "such files, or a hub dataset id (owner/name)"
)


class DataError(ValueError):
    """A row of a source cannot be used. The message names the source, the row and the field.

    `reason` is a short label of the kind of problem (e.g. `"corrupt image"`), used to count skipped rows; it
    defaults to `problem`.
    """

    def __init__(self, source: str, row: int | None, field: str, problem: str, reason: str | None = None):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        self.reason = reason or problem
        where = f"source '{source}'" + (f", row {row}" if row is not None else "") + f", field '{field}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # pickled across processes (validation workers, ranks) with its fields
        return (DataError, (self.source, self.row, self.field, self.problem, self.reason))


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
    """Load a source from any of the forms users keep data in:

    * a `save_to_disk` folder (a `Dataset`, or a `DatasetDict` whose `split` is taken), including an empty one;
    * a data file — `.parquet`, `.jsonl` / `.json`, `.csv` / `.tsv`, `.arrow` — or a folder of such files, read
      with `datasets.load_dataset` (images stored by `datasets` in Parquet come back as images);
    * a hub dataset id (`datasets.load_dataset(path, split=split)`, when the hub is reachable).

    `"name=path"` renames it; by default the source is named after the folder or file (without its suffix). A
    `DatasetDict` with `split=None` gives its `validation` split, else its `test` split (the convention for
    targets, [`load_target`]). Anything else raises naming what was given and what is accepted.
    """
    spec = os.fspath(path)
    given, spec = split_spec(spec)
    name = name or given
    p = pathlib.Path(spec)
    if p.is_file():
        builder = FILE_BUILDERS.get("".join(p.suffixes[-1:]).lower())
        if builder is None:
            raise ValueError(f"{role} {spec!r} is a file of a kind mixwise cannot read; accepted: {ACCEPTED_SOURCES}")
        kwargs = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
        ds = _load_dataset(builder, role, spec, data_files=str(p), split="train", **kwargs)
        default_name = p.stem
    elif p.is_dir():
        if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            ds = load_saved(p)
        elif any(f.suffix.lower() in FILE_BUILDERS for f in p.rglob("*") if f.is_file()):
            ds = _load_dataset(str(p), role, spec, split=split or "train")
        else:
            raise ValueError(
                f"{role} folder {spec!r} holds neither a save_to_disk dataset nor data files; accepted: "
                f"{ACCEPTED_SOURCES}"
            )
        default_name = p.name
    elif p.is_absolute() or spec.startswith(".") or spec.count("/") > 1 or p.suffix.lower() in FILE_BUILDERS:
        raise FileNotFoundError(f"{role} {spec!r} does not exist; accepted: {ACCEPTED_SOURCES}")
    else:  # a hub dataset id
        try:
            ds = datasets.load_dataset(spec, split=split or "validation")
        except Exception as err:  # offline, unknown id, ...: say both things that were tried
            raise FileNotFoundError(
                f"{role} {spec!r} is neither a local dataset folder or file nor a dataset on the hub "
                f"({type(err).__name__}: {err}); accepted: {ACCEPTED_SOURCES}"
            ) from None
        default_name = pathlib.Path(spec.rstrip("/")).name
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = next((s for s in ("validation", "test") if s in ds), None)
            if split is None:
                raise KeyError(f"{role} {spec!r} has neither a validation nor a test split ({list(ds)}); pass a split")
        if split not in ds:
            raise KeyError(f"{role} {spec!r} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return Source(name or default_name, ds, split=split, role=role)


def _load_dataset(path: str, role: str, spec: str, **kwargs: Any) -> datasets.Dataset | datasets.DatasetDict:
    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as err:  # a malformed file: name it, with what datasets said
        raise ValueError(
            f"{role} {spec!r} could not be read by datasets.load_dataset ({type(err).__name__}: {err})"
        ) from None


def load_saved(path: str | os.PathLike) -> datasets.Dataset | datasets.DatasetDict:
    """`datasets.load_from_disk`, and also for a saved dataset with no rows (which `load_from_disk` cannot read:
    it has no Arrow shard); the empty dataset keeps its features and fingerprint."""
    path = pathlib.Path(path)
    state = path / "state.json"
    if state.exists():
        with open(state) as f:
            saved = json.load(f)
        if not saved.get("_data_files"):
            info = datasets.DatasetInfo.from_directory(str(path))
            features = info.features or datasets.Features()
            table = datasets.table.InMemoryTable(features.arrow_schema.empty_table())
            return datasets.Dataset(table, info=info, fingerprint=saved.get("_fingerprint"))
    if (path / "dataset_dict.json").exists():
        with open(path / "dataset_dict.json") as f:
            splits = json.load(f).get("splits", [])
        return datasets.DatasetDict({s: load_saved(path / s) for s in splits})
    return datasets.load_from_disk(str(path))


def load_sources(paths: Sequence[str | os.PathLike], split: str | None = "train", role: str = "pool") -> list[Source]:
    """[`load_source`] for each path, refusing the same data given twice (the same folder or file, or two sources
    with the same name): merging them silently would double their weight or hide one of them."""
    seen: dict[str, str] = {}
    out: list[Source] = []
    for path in paths:
        given, spec = split_spec(os.fspath(path))
        key = os.path.realpath(spec) if os.path.exists(spec) else spec
        if key in seen:
            raise ValueError(f"{role} {spec!r} is given twice ({seen[key]!r} and {os.fspath(path)!r}); give it once")
        seen[key] = os.fspath(path)
        src = load_source(path, split=split, role=role)
        clash = next((s for s in out if s.name == src.name), None)
        if clash is not None:
            raise ValueError(
                f"two {role} sources are named {src.name!r} ({seen[key]!r} and an earlier one); rename one with "
                f"name=path"
            )
        out.append(src)
    return out


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


class TextBytes(TypeError):
    """A text field holds `bytes` (text stored as Arrow `binary`): the chat template cannot render it."""


def _content_text(content: Any) -> str:
    """Text of a message's content: a plain string, or the text parts of a list of parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, bytes | bytearray):
        raise TextBytes("content")
    texts = []
    for part in content:
        if isinstance(part, Mapping):
            if part.get("type", "text") == "text" and part.get("text"):
                if isinstance(part["text"], bytes | bytearray):
                    raise TextBytes("text")
                texts.append(part["text"])
        elif isinstance(part, str):
            texts.append(part)
        elif isinstance(part, bytes | bytearray):
            raise TextBytes("content")
    return "\n".join(texts)


def _role_text(messages: Sequence[Mapping[str, Any]], role: str) -> str:
    return "\n".join(t for m in messages if m.get("role") == role and (t := _content_text(m.get("content"))))


def check_roles(messages: Sequence[Any], source: str = "?", index: int | None = None, field: str = "messages") -> None:
    """Raise a [`DataError`] unless every message is a mapping whose `role` is one of TRL's [`CHAT_ROLES`].

    ShareGPT's spellings (`human`, `gpt`, or `from`/`value` keys) get a message saying how to convert them
    ([`from_sharegpt`]) rather than being taken for a missing question or answer.
    """
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(
                source, index, field, f"message {k} is a {type(m).__name__}, not a {{role, content}} mapping"
            )
        role = m.get("role")
        if role is None and "from" in m:
            raise DataError(
                source,
                index,
                field,
                f"message {k} uses ShareGPT's keys (from/value); convert the dataset with mixwise.sources.from_sharegpt",
                reason="ShareGPT keys (from/value)",
            )
        if isinstance(role, bytes | bytearray):
            raise DataError(source, index, field, f"message {k}: role is stored as bytes (binary), not text")
        if role not in CHAT_ROLES:
            hint = (
                f"'{role}' is ShareGPT's spelling of '{SHAREGPT_ROLES[role]}': convert the dataset with "
                "mixwise.sources.from_sharegpt"
                if role in SHAREGPT_ROLES
                else "the trainer refuses it (TRL: 'Invalid role in message')"
            )
            raise DataError(
                source,
                index,
                field,
                f"message {k} has role {role!r}, not one of {list(CHAT_ROLES)}; {hint}",
                reason="role outside system/user/assistant/tool",
            )


def row_images(row: Mapping[str, Any]) -> list[Any]:
    """The images of a row (`images` list or a single `image`); empty for text-only rows."""
    for col in IMAGE_COLUMNS:
        if col in row and row[col] is not None:
            value = row[col]
            return list(value) if isinstance(value, list | tuple) else [value]
    return []


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # modes a plain `convert("RGB")` saturates


def needs_depth_conversion(image: Image.Image) -> bool:
    """Whether `image` holds more than 8 bits per sample (16-bit, 32-bit integer or float), which processors'
    `convert("RGB")` clips to 255 (a 16-bit photo becomes white) — [`as_pil`] scales it instead."""
    return image.mode in HIGH_DEPTH_MODES


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode (the image itself when it is RGB already).

    * transparency (`RGBA`, `LA`, `PA`, `La`, `RGBa`, a `P` or `L` image with a `transparency` key) is composited
      onto white, as `transformers.image_transforms.convert_to_rgb` does before every processor;
    * `I;16*` (16-bit) is scaled to 8 bits: `round(v · 255 / 65535)`;
    * `I` (32-bit integer) the same, clipped to `[0, 65535]`, unless every value already fits 8 bits (then kept);
    * `F` (float): `round(v · 255)` when the values lie in `[0, 1]`, else clipped to `[0, 255]`;
    * every other mode (`1`, `L`, `P`, `CMYK`, `YCbCr`, `HSV`, `LAB`, ...) by PIL's own `convert("RGB")`.
    """
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_DEPTH_MODES:
        values = np.asarray(image)
        if image.mode == "F":
            values = values.astype(np.float64)
            finite = values[np.isfinite(values)]
            scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 1.0
            gray = np.clip(np.nan_to_num(values * scale), 0, 255)
        else:
            values = values.astype(np.int64)
            if image.mode == "I" and values.size and values.min() >= 0 and values.max() <= 255:
                gray = values  # a 32-bit integer image holding 8-bit values
            else:
                gray = np.clip(values, 0, 65535) * 255 / 65535
        return Image.fromarray(np.rint(gray).astype(np.uint8), mode="L").convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(value: Any) -> Image.Image:
    """A PIL image from a PIL image, an undecoded `datasets.Image` dict (`bytes`/`path`), raw bytes or a path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path is None:
            raise ValueError("image has neither bytes nor path")
        value = data if data is not None else path
    if isinstance(value, bytes | bytearray | memoryview):
        value = io.BytesIO(value)
    return Image.open(value)


def as_pil(value: Any) -> Image.Image:
    """A decoded 8-bit RGB image from a PIL image, an undecoded `datasets.Image` dict (`bytes`/`path`) or a file
    path, converted by [`to_rgb`] (every PIL mode, transparency onto white, 16-bit and float scaled)."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    with open_image(value) as im:
        im.load()
        out = to_rgb(im)
        return out.copy() if out is im else out


def row_format(columns: Iterable[str]) -> Literal["sft", "rl"]:
    """`"sft"` when the rows carry `messages`, `"rl"` when they carry `prompt` and a reference answer."""
    columns = set(columns)
    if "messages" in columns:
        return "sft"
    if "prompt" in columns and any(c in columns for c in ANSWER_COLUMNS):
        return "rl"
    hint = (
        "; this looks like ShareGPT data: convert it with mixwise.sources.from_sharegpt"
        if "conversations" in columns
        else ""
    )
    raise DataError(
        "?",
        None,
        "messages",
        f"rows need either 'messages' (SFT) or 'prompt' + one of {list(ANSWER_COLUMNS)} (RL); columns are "
        f"{sorted(columns)}{hint}",
    )


def extract_fields(row: Mapping[str, Any], source: str = "?", index: int | None = None) -> Fields:
    """Derive Q, A and I from a row in SFT or RL format.

    Raises:
        DataError: naming the source, row and field when a message has a role outside [`CHAT_ROLES`], text is
            stored as bytes, or Q or A cannot be found or A is empty.
    """
    try:
        if "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list | tuple) or not messages:
                raise DataError(source, index, "messages", "expected a non-empty list of messages")
            check_roles(messages, source, index)
            question = _role_text(messages, "user")
            answer = _role_text(messages, "assistant")
            answer_field = "messages"
        elif "prompt" in row:
            prompt = row["prompt"]
            if isinstance(prompt, bytes | bytearray):
                raise TextBytes("prompt")
            if not isinstance(prompt, str):
                check_roles(prompt or [], source, index, "prompt")
            question = prompt if isinstance(prompt, str) else _role_text(prompt or [], "user")
            answer_field = next((c for c in ANSWER_COLUMNS if c in row), None)
            if answer_field is None:
                raise DataError(
                    source, index, "answer", f"RL row has no reference answer column (one of {ANSWER_COLUMNS})"
                )
            answer = row[answer_field]
            if isinstance(answer, bytes | bytearray):
                raise TextBytes(answer_field)
            answer = "" if answer is None else str(answer)
        else:
            raise DataError(
                source, index, "messages", f"row has neither 'messages' nor 'prompt' (keys: {sorted(row)})"
            )
    except TextBytes as err:
        column = "messages" if "messages" in row else ("prompt" if str(err) in ("content", "text") else str(err))
        raise DataError(
            source,
            index,
            column,
            "text is stored as bytes (an Arrow binary column), not as a string",
            reason="text stored as bytes",
        ) from None
    if not question.strip():
        raise DataError(source, index, "messages" if "messages" in row else "prompt", "no user text found")
    if not answer.strip():
        raise DataError(source, index, answer_field, "empty answer")
    return Fields(question=question, answer=answer, images=row_images(row))


# ----------------------------------------------------------------------------------------------------------------
# ShareGPT
# ----------------------------------------------------------------------------------------------------------------


def sharegpt_messages(conversation: Sequence[Mapping[str, Any]], image_marker: str = "<image>") -> list[dict]:
    """TRL `messages` from a ShareGPT conversation (`{"from": "human" | "gpt" | "system", "value": text}`, or
    `role`/`content` with ShareGPT's role names): `human` → `user`, `gpt` → `assistant`, and each `<image>` marker
    in the text becomes an image part at its place (LLaVA's data puts `"<image>\\n"` before the question)."""
    out = []
    for k, turn in enumerate(conversation):
        speaker = turn.get("from", turn.get("role"))
        if speaker not in SHAREGPT_ROLES:
            raise ValueError(f"turn {k}: speaker {speaker!r} is not one of {sorted(SHAREGPT_ROLES)}")
        text = turn.get("value", turn.get("content"))
        text = "" if text is None else str(text)
        parts: list[dict[str, Any]] = []
        pieces = text.split(image_marker)
        for j, piece in enumerate(pieces):
            if j > 0:
                parts.append({"type": "image", "text": None})
            if len(pieces) > 1:
                piece = piece.strip("\n")
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": SHAREGPT_ROLES[speaker], "content": parts})
    return out


def from_sharegpt(
    dataset: datasets.Dataset,
    column: str | None = None,
    image_marker: str = "<image>",
    num_proc: int | None = None,
) -> datasets.Dataset:
    """A ShareGPT / LLaVA-style dataset (a `conversations` column of `{"from", "value"}` turns, roles `human` /
    `gpt`) as TRL's format: a `messages` column of `{"role", "content": [parts]}` with image parts where the text
    had `<image>`, and a single `image` column renamed to `images` (a list). Other columns are kept."""
    column = column or next((c for c in ("conversations", "messages") if c in dataset.column_names), None)
    if column is None:
        raise ValueError(f"no conversations column in {dataset.column_names}; name it with column=")

    def convert(batch: dict[str, list]) -> dict[str, list]:
        out = {"messages": [sharegpt_messages(c, image_marker) for c in batch[column]]}
        if "image" in batch and "images" not in batch:
            out["images"] = [[] if im is None else [im] for im in batch["image"]]
        return out

    remove = [column] + (["image"] if "image" in dataset.column_names and "images" not in dataset.column_names else [])
    return dataset.map(convert, batched=True, remove_columns=remove, num_proc=num_proc, desc="from ShareGPT")


def __getattr__(name: str) -> Any:
    # Validation moved to `mixwise.validation` (which imports this module); the old names still resolve here.
    if name in ("validate_source", "SkipReport"):
        import importlib

        return getattr(importlib.import_module("mixwise.validation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCEPTED_SOURCES",
    "ANSWER_COLUMNS",
    "CHAT_ROLES",
    "DataError",
    "FILE_BUILDERS",
    "Fields",
    "HIGH_DEPTH_MODES",
    "IMAGE_COLUMNS",
    "SHAREGPT_ROLES",
    "Source",
    "TextBytes",
    "as_pil",
    "as_sources",
    "check_roles",
    "extract_fields",
    "from_sharegpt",
    "load_saved",
    "load_source",
    "load_sources",
    "load_target",
    "named_datasets",
    "needs_depth_conversion",
    "open_image",
    "row_format",
    "row_images",
    "sharegpt_messages",
    "split_spec",
    "to_rgb",
]
