"""MM-GEN step 2d: the append-only generation log that makes a crashed run resume without duplicates.

**Resumable output** ([`GenerationLog`]): an append-only JSONL file, one record per (image id, prompt id),
written and `fsync`ed as soon as each output arrives. A crash loses nothing already written (a torn last line is
cut off when the file is reopened, and counted); a restart skips every key that has an `ok` record, so no row is
generated or written twice. Failed requests are recorded as `error` and retried on the next run. Raw texts are
stored, and parsed when collected, so a better parser applies to old outputs too. An exclusive `flock` stops
two processes from writing one log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


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
