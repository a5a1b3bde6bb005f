"""The benchmark's reporting: its rows, the table (or JSON) and the progress lines."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence, TextIO

from .bench_measure import Layout, OptimizerSpec


def make_row(spec: OptimizerSpec, layout: Layout, impl: str, bpp: int, size: int,
         seconds: float | None, error: str | None = None) -> dict[str, Any]:
    return {
        "optimizer": spec.name, "layout": layout.name, "num_tensors": len(layout.sizes),
        "impl": impl,
        "ms_per_step": None if seconds is None else seconds * 1e3,
        "gb_per_s": None if seconds is None else bpp * size / seconds / 1e9,
        "bytes_per_param": bpp,
        "fraction_of_probe": None, "speedup_vs": None, "max_abs_diff": None, "error": error,
    }


class Progress:
    """One line per case on ``stream``: its label when it starts, its time when it ends, and,
    once a case has ended, the time elapsed and an estimate of the time left: the elapsed time
    scaled by the work left over the work done, the cases' work in ``weights`` (default: equal),
    said to be an estimate (the cases' speeds differ)."""

    def __init__(self, total: int, stream: TextIO | None = None, weights: Sequence[float] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.done, self.stream = total, 0, stream
        self.weights = list(weights) if weights is not None else [1.0] * total
        self.clock = clock
        self.began = clock()

    def start(self, label: str) -> None:
        self.done += 1
        finished = sum(self.weights[:self.done - 1])
        timing = ""
        if finished > 0:
            elapsed = self.clock() - self.began
            left = elapsed * sum(self.weights[self.done - 1:]) / finished
            timing = f" ({_clock(elapsed)} elapsed, about {_clock(left)} left at the pace so far)"
        self._write(f"[{self.done}/{self.total}] {label}{timing} ... ")

    def end(self, text: str) -> None:
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


# ---- the table -----------------------------------------------------------------------------

def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table_cells(row: Mapping[str, Any]) -> list[str]:
    n = row["num_tensors"]
    layout = "-" if row["impl"] == "probe" else (
        "1 tensor" if n == 1 else f"{n} tensors") if row["layout"] in ("single", "multi") else \
        f"{row['layout']} ({n} tensors)"
    frac = row["fraction_of_probe"]
    speed = row["speedup_vs"]
    # (a fraction above 1: fastopt moved more than the probe, which is then no bound: no ratio;
    # a peer faster than fastopt says so)
    of_probe = "no ceiling" if frac is not None and frac > 1 else _fmt(None if frac is None else 100 * frac, ".0f", "%")
    faster = "-" if row["impl"] in ("fastopt", "probe") else _fmt(speed, ".2f", "x")
    if speed is not None and speed < 1 and faster != "-":
        faster += " (slower)"
    cells = [row["optimizer"], layout, row["impl"],
             _fmt(row["ms_per_step"], ".3f"), _fmt(row["gb_per_s"], ".1f"), str(row["bytes_per_param"]),
             of_probe, faster,
             _fmt(row["max_abs_diff"], ".1e")]
    if row["error"]:
        cells[3] = "n/a"
        cells.append(row["error"][:90])
    return cells


def _layouts_doc(report: Mapping[str, Any]) -> str:
    named = {k: v for k, v in report.get("layouts", {}).items() if k not in ("single", "multi")}
    if named:
        return ", ".join(f"{k} ({n} tensors, {total} params)" for k, (n, total) in report["layouts"].items())
    if report["tensors"] == 1:
        return "1 tensor"
    sizes = report["tensor_sizes"]
    return f"1 tensor, and {report['tensors']} tensors of {sizes['min']} to {sizes['max']} params"


HEADER = ["optimizer", "layout", "impl", "ms/step", "GB/s", "B/param", "of probe",
          "fastopt faster", "max|dp|"]


def format_table(report: Mapping[str, Any]) -> str:
    """The report as text: a header (environment, bytes model) and an aligned table."""
    torch = f"torch {report['torch']} ({report['torch_threads']} threads)" if report["torch"] else "torch: not used"
    lines = [
        f"fastopt {report['fastopt_version']} bench: {report['size']} {report['dtype']} params"
        f"{power_of_two(report['size'])}; "
        f"cpu_isa {report['cpu_isa']}, {report['threads']} threads; {torch}; numpy {report['numpy']}",
        f"layouts: {_layouts_doc(report)}; median of {report['repeats']} steps after "
        f"{report['warmup']} warmup steps",
        "bytes per param and step (GB/s = B/param * params / time, for every row):",
    ]
    for name, doc in report["streams"].items():
        rows = [r for r in report["rows"] if r["optimizer"] == name and r["impl"] != "probe"]
        bpp = next((r for r in rows if r["layout"] in ("single", "multi")), rows[0])["bytes_per_param"]
        lines.append(f"  {name} {bpp:g} B = {doc}")
    lines.append("probe: fastopt's engine over one tensor with the update's streams, each once (every state stream "
                 "read and written; a two-pass rule's other pass left out), and no math; of probe = GB/s / probe GB/s "
                 "(\"no ceiling\": above the probe's, which then bounds nothing); fastopt faster = impl time / "
                 "fastopt time (\"slower\" below 1); max|dp| = final params vs fastopt's")
    lines.append("")
    fixed = report["fixed_cost_us"]
    lines.append("fixed cost of a step (adamw, 1000 tensors of 1 element): " +
                 ", ".join(f"{k} {v:.1f} us" for k, v in fixed.items()))
    lines.append("")
    return "\n".join(lines + table_lines(report["rows"]))


def table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows as aligned text lines under HEADER, a blank line between optimizers."""
    return aligned_lines(HEADER, [_table_cells(r) for r in rows], left=3)


def aligned_lines(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """``rows`` of cells as text lines under ``header``: the first ``left`` columns left-aligned,
    the others right-aligned, cells past the header appended as they are, and a blank line
    where the first cell changes."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(c[i]) for c in table) for i in range(len(header))]
    lines = []
    for k, cells in enumerate(table):
        if k > 1 and cells[0] != table[k - 1][0]:
            lines.append("")
        out = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append("  ".join(out + cells[len(header):]).rstrip())
    return lines


def power_of_two(size: int) -> str:
    """``" = 2**k"`` where ``size`` is 2**k, else ``""``."""
    return f" = 2**{size.bit_length() - 1}" if size & (size - 1) == 0 else ""
