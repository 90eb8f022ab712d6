"""MM-GEN step 2b: reading the generator's question–answer pairs back, repairing malformed JSON.

**Parsing** ([`parse_pairs`]): strict JSON first; then repairs, each counted by name: code fences stripped, the
first JSON array (or object) extracted from surrounding prose, trailing commas removed, Python-style literals
(single quotes, `True`/`None`), unquoted `Q`/`A` keys, a truncated array cut back to its complete objects, and
wrappers such as `{"pairs": [...]}` or a single `{"Q", "A"}` object. Key names are matched case-insensitively
(`Q`/`question`, `A`/`answer`); numbers become strings. Output that cannot be read is rejected with a reason;
pairs beyond N are dropped (counted), fewer than N are kept (counted).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
