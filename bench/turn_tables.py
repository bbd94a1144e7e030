"""Markdown tables from bench/turn_latency.py's JSON lines, per voice family and language.

    .venv/bin/python -m bench.turn_tables run.jsonl [more.jsonl ...]

One row per configuration and group (voice family / language): finished turns' reply
latency p50 / p90 (clean runs), and sentences cut off at pauses of at most 0.7 s (and at
any pause) among those with pauses; then the same over everything, per configuration.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PATIENCE = 0.7


def _records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "config" in record:
                found.append(record)
    return found


def _cell(latencies: list[float]) -> str:
    if not latencies:
        return "—"
    p50, p90 = np.percentile(latencies, 50), np.percentile(latencies, 90)
    return f"{p50:,.0f} / {p90:,.0f}"


def rows(record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    runs = record["runs"]
    groups = sorted({(r["family"], r["language"]) for r in runs})
    out = []
    for key in [*groups, ("all", "")]:
        chosen = [r for r in runs if key == ("all", "") or (r["family"], r["language"]) == key]
        finished = [
            r["latency_ms"]
            for r in chosen
            if r["speech"].split("-")[3] == "complete" and r["latency_ms"] is not None
        ]
        paused = [r for r in chosen if r["speech"].split("-")[3] == "mid_sentence"]
        short = [r for r in paused if _longest(r) <= PATIENCE + 1e-9]
        cut_short = sum(bool(r["cut_off"]) for r in short)
        cut_all = sum(bool(r["cut_off"]) for r in paused)
        name = "all" if key == ("all", "") else f"{key[0]} {key[1]}"
        out.append(
            (
                name,
                _cell(finished),
                f"{cut_short} of {len(short)}" if short else "—",
                f"{cut_all} of {len(paused)}" if paused else "—",
            )
        )
    return out


def _longest(run: dict[str, Any]) -> float:
    # the file name carries the pauses in ms: NNN-family-lang-category-place-600_300ms
    pauses = run["speech"].rsplit("-", 1)[1].removesuffix("ms").split("_")
    return max(int(p) for p in pauses) / 1000


def table(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| configuration | voices | finished: reply p50 / p90 (ms) | cut at pauses ≤ 0.7 s "
        "| cut at any pause |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        for name, finished, short, any_pause in rows(record):
            lines.append(f"| {record['config']} | {name} | {finished} | {short} | {any_pause} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        raise SystemExit("usage: python -m bench.turn_tables RUN.jsonl [...]")
    print(table(_records(paths)))


__all__ = ["main", "rows", "table"]


if __name__ == "__main__":
    main()
