"""`mixwise generate --config mmgen.yaml`: MM-GEN — partition, generate, filter (resumable). The shipped example:
`mixwise recipes copy mmgen.yaml`."""

from __future__ import annotations

from .main import parse_with


def parse(argv, prog: str, description: str) -> tuple:
    from ..mmgen.config import GenerateConfig

    return parse_with([GenerateConfig], argv, prog, description)


def run(config) -> int:
    from ..mmgen.pipeline import run_mmgen

    result = run_mmgen(config)
    summary = result.summary
    print("subgroup\tshare\timages\tpairs_parsed\tpairs_kept")
    for name, g in summary["subgroups"].items():
        print(f"{name}\t{g['share']:.4f}\t{g['images']}\t{g['pairs_parsed']}\t{g['pairs_kept']}")
    rejected = ", ".join(f"{k}: {v}" for k, v in summary["rejected_items"].items()) or "none"
    dropped = ", ".join(f"{k}: {v}" for k, v in (summary["filter"] or {}).items()) or "none"
    print(f"items: {summary['items']}, rejected: {rejected}; pairs parsed: {summary['pairs_parsed']}")
    print(f"filtered out: {dropped}; kept {summary['pairs_kept']} rows in {result.out / 'dataset'}")
    return 0
