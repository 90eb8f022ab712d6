"""MM-GEN step 2: targeted question–answer generation with a stronger VLM, JSON repair, resumable output.

MM-GEN (Joshi et al., 2025, arXiv:2501.04155) annotates every candidate image of a subgroup with a prompt that
holds the task description and in-context examples *from the same subgroup*, asking a stronger VLM for exactly N
diverse question–answer pairs as JSON `[{"Q": ..., "A": ...}]`.

[`run_generation`] generates every item not yet in the log ([`mixwise.mmgen.log`]); [`collect_rows`] parses the
log's outputs ([`mixwise.mmgen.parsing`]) into pair records, counting every rejection by reason.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .generators import GenerationRequest, Generator
from .log import GenerationLog
from .parsing import parse_pairs
from .partition import ImagePool
from .prompts import GenerationItem


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
