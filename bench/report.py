"""A benchmark figure, and how a run's figures are shown (a rich table) and kept (JSON)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Figure:
    """One measured value: which P figure it belongs to, for which N, against which goal.

    ``met`` is None where the goal is not decided at this N (a goal set at 100k, a figure that is
    read against an anchor rather than held to a goal); ``ratio`` is the value over the figure it is
    compared with (the lower bound, the anchor, P2's time, the smallest N's RSS)."""

    figure: str
    what: str
    n: int
    value: float | None
    unit: str
    goal: str = ""
    met: bool | None = None
    ratio: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("s", "ms") and value < 10:
        return f"{value:.2f}"
    if unit in ("MB", "s") or abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _verdict(f: Figure) -> str:
    ratio = f"{f.ratio:.2f}×" if f.ratio is not None else ""
    if f.met is None:
        return ratio or "—"
    mark = "[green]yes[/green]" if f.met else "[red]no[/red]"
    return f"{mark} {ratio}".strip()


def table(figures: Sequence[Figure], title: str) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for name, justify in (("figure", "left"), ("what", "left"), ("N", "right"), ("value", "right"),
                          ("unit", "left"), ("goal", "left"), ("met? / ratio", "left"), ("note", "left")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    order: dict[str, int] = {}
    for f in figures:
        order.setdefault(f.what, len(order))
    for f in sorted(figures, key=lambda f: (f.figure, order[f.what], f.n)):  # each line's sizes side by side
        if previous is not None and f.figure != previous:
            t.add_section()
        previous = f.figure
        t.add_row(f.figure, f.what, f"{f.n:,}", _number(f.value, f.unit), f.unit, f.goal, _verdict(f), f.note)
    return t


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.machine()}


def print_report(figures: Sequence[Figure], sizes: Sequence[int], console: Console | None = None) -> None:
    if console is None:
        plain = Console()
        console = plain if plain.is_terminal else Console(width=220)  # a pipe or a file: don't wrap at 80
    info = machine()
    console.print(table(figures, f"bc-dataverse-sandbox benchmark: N = {', '.join(f'{n:,}' for n in sizes)} "
                                 f"({info['cpus']} cores, Python {info['python']})"))


def write_json(path: Path, figures: Sequence[Figure], sizes: Sequence[int], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                "sizes": list(sizes), "seconds": round(seconds, 1), "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
