"""PNG plots of a run, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: nothing touches the user's global backend or needs a
display, and figures are freed as soon as they are rendered to bytes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from edgeslim.report.table import Row, stage_name

DPI = 120
MAX_BARS = 30  # latency plot: the slowest layers, the rest summed into one bar
# Label offsets (points) cycled over stages so that labels of close points don't overprint.
_OFFSETS = ((6, 6), (6, -12), (-10, 10), (-10, -16))


def render_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _series(stages: Sequence[Row], x_key: str, y_key: str) -> list[tuple[str, float, float]]:
    return [(f"{i}: {stage_name(r, i)}", float(r[x_key]), 100 * float(r[y_key]))
            for i, r in enumerate(stages) if _number(r.get(x_key)) and _number(r.get(y_key))]


@dataclass(frozen=True)
class TradeOff:
    """An accuracy-versus-cost scatter: one labelled point per stage."""

    x_key: str
    what: str  # for the title: "Accuracy vs <what> per stage"
    x_label: str
    engineering: bool = True  # tick labels like 61.7k / 2.3M (counts); plain numbers for ms
    extra: tuple[tuple[str, str, str], ...] = ()  # (x_key, y_key, legend) series, e.g. int8

    def __call__(self, stages: Sequence[Row]) -> bytes | None:
        main = _series(stages, self.x_key, "accuracy")
        if not main:
            return None
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.add_subplot()
        series = ((self.x_key, "accuracy", "fp32 PyTorch"),) + self.extra
        for n, ((x_key, y_key, legend), style) in enumerate(zip(series, ("-o", "--s", ":^"))):
            points = _series(stages, x_key, y_key)
            if not points:
                continue
            ax.plot([p[1] for p in points], [p[2] for p in points], style, label=legend)
            for j, (label, x, y) in enumerate(points):  # full labels on the main series only
                text = label if n == 0 else label.split(":")[0]
                ax.annotate(text, (x, y), xytext=_OFFSETS[j % len(_OFFSETS)],
                            textcoords="offset points", fontsize=8)
        xs = [p[1] for p in main]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if self.engineering:
            ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel(self.x_label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"Accuracy vs {self.what} per stage")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.15)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
        return render_png(fig)


def channels_plot(before: Mapping[str, int] | None, after: Mapping[str, int] | None) -> bytes | None:
    """Grouped bars: output channels of every conv/linear layer before and after pruning.

    With only one of the two dicts, one bar per layer.
    """
    series = [(label, counts, color) for label, counts, color in
              (("before", before, "#9ecae1"), ("after", after, "#3182bd")) if counts]
    layers = list(dict.fromkeys(k for _, counts, _ in series for k in counts))
    if not layers:
        return None
    fig = Figure(figsize=(min(24.0, max(6.4, 0.32 * len(layers) + 2)), 4.6))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for j, (label, counts, color) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(layers))], [counts.get(k, 0) for k in layers], width,
               label=label, color=color)
    ax.set_xticks(list(range(len(layers))), layers, rotation=90, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("Channels per layer" + (" before and after pruning" if len(series) == 2 else ""))
    ax.grid(axis="y", alpha=0.3)
    if len(series) == 2:
        ax.legend(fontsize=8)
    return render_png(fig)


def _top_layers(latency: Mapping[str, float]) -> list[tuple[str, float]]:
    items = list(latency.items())
    if len(items) <= MAX_BARS:
        return items
    keep = {k for k, _ in sorted(items, key=lambda kv: -kv[1])[: MAX_BARS - 1]}
    rest = [v for k, v in items if k not in keep]
    return [kv for kv in items if kv[0] in keep] + [(f"other ({len(rest)} layers)", sum(rest))]


def layer_latency_plot(latency: Mapping[str, float]) -> bytes | None:
    """Horizontal bars: milliseconds per layer, in execution order, top to bottom."""
    items = _top_layers(latency)
    if not items:
        return None
    fig = Figure(figsize=(6.4, 0.26 * len(items) + 1.4))
    ax = fig.add_subplot()
    ys = range(len(items))
    ax.barh(list(ys), [v for _, v in items], color="#fd8d3c")
    ax.set_yticks(list(ys), [k for k, _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per forward pass (CPU, batch of the example input)")
    ax.set_title(f"Latency per layer (total {sum(latency.values()):.3f} ms)")
    ax.grid(axis="x", alpha=0.3)
    return render_png(fig)


# name -> (caption, plot of the stage rows); each returns None when it has no data.
TRADE_OFFS: dict[str, tuple[str, Callable[[Sequence[Row]], bytes | None]]] = {
    "accuracy_vs_params": ("Accuracy vs parameters", TradeOff("params", "parameters", "parameters (count)")),
    "accuracy_vs_flops": ("Accuracy vs FLOPs", TradeOff("flops", "FLOPs", "FLOPs per image")),
    "accuracy_vs_latency": ("Accuracy vs latency", TradeOff(
        "latency_ms", "latency", "latency (ms, CPU, 1 thread, batch 1)", engineering=False,
        extra=(("onnx_latency_ms", "accuracy", "fp32 onnxruntime"),
               ("int8_latency_ms", "int8_accuracy", "int8")))),
}
