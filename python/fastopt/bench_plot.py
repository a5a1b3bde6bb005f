"""``fastopt bench --plot FILE.png``: the report as a picture (matplotlib, the ``plot`` extra).

A sweep (``--sweep``) draws ms/step and GB/s against the number of params, log scales, a line
per implementation and layout; the main table draws, per optimizer, ms/step of every
implementation as bars grouped by layout."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["plot_report"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'fastopt[plot]'") from None
    matplotlib.use("Agg")  # (files only: no display needed)
    import matplotlib.pyplot as plt
    return plt


def _title(report: Mapping[str, Any]) -> str:
    torch = f", torch {report['torch']}" if report.get("torch") else ""
    return f"fastopt {report['fastopt_version']} ({report['cpu_isa']}, {report['threads']} threads){torch}"


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Writes the picture of a ``fastopt bench`` report (JSON form) to ``path`` (ValueError
    without matplotlib, or for a report with nothing to draw)."""
    plt = _pyplot()
    rows = [r for r in report["rows"] if r.get("ms_per_step") is not None and r["impl"] != "probe"]
    if not rows:
        raise ValueError("the report has no timed rows to plot")
    if report.get("kind") == "sweep":
        fig, (ms, gbs) = plt.subplots(1, 2, figsize=(13, 5))
        lines: dict[tuple, list] = {}
        for r in rows:
            label = f"{r['impl']}, {'1 tensor' if r['layout'] == 'single' else 'many tensors'}"
            if len(report["config"]["optimizers"]) > 1:
                label = f"{r['optimizer']} {label}"
            lines.setdefault((label, r["impl"] == "fastopt"), []).append(r)
        for (label, ours), rs in lines.items():
            style = dict(linewidth=2.5 if ours else 1.2, linestyle="-" if "1 tensor" in label else "--", marker=".")
            ms.plot([r["size"] for r in rs], [r["ms_per_step"] for r in rs], label=label, **style)
            gbs.plot([r["size"] for r in rs], [r["gb_per_s"] for r in rs], label=label, **style)
        ms.set(xscale="log", yscale="log", xlabel="params", ylabel="ms per step")
        gbs.set(xscale="log", xlabel="params", ylabel="GB/s (bytes the step moves / time)")
        ms.legend(fontsize=7)
        for ax in (ms, gbs):
            ax.grid(True, which="both", alpha=0.3)
    else:
        optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
        fig, axes = plt.subplots(len(optimizers), 1, figsize=(11, 3.2 * len(optimizers)), squeeze=False)
        for ax, name in zip(axes[:, 0], optimizers):
            mine = [r for r in rows if r["optimizer"] == name]
            layouts = list(dict.fromkeys(r["layout"] for r in mine))
            impls = list(dict.fromkeys(r["impl"] for r in mine))
            width = 0.8 / len(impls)
            for k, impl in enumerate(impls):
                got = {r["layout"]: r["ms_per_step"] for r in mine if r["impl"] == impl}
                xs = [j + k * width for j, layout in enumerate(layouts) if layout in got]
                ax.bar(xs, [got[layout] for layout in layouts if layout in got], width, label=impl)
            counts = {r["layout"]: r["num_tensors"] for r in mine}
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layouts))],
                          [f"{layout} ({counts[layout]} tensors)" for layout in layouts])
            ax.set(yscale="log", ylabel="ms per step", title=name)
            ax.legend(fontsize=7)
    fig.suptitle(_title(report))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
