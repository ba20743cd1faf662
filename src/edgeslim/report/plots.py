"""PNG plots of a run, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: nothing touches the user's global backend or needs a
display, and figures are freed as soon as they are rendered to bytes.
"""
from __future__ import annotations

import io
import textwrap
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


def untrained(row: Row) -> bool:
    """A stage whose model changed structure and was not trained since (``trained`` is False)."""
    return row.get("trained") is False


def distinct_models(stages: Sequence[Row]) -> list[tuple[list[int], Row]]:
    """``(stage indices, row)`` per distinct model, in order: a stage that hands on the model it
    was given (the same ``model_sha256`` as the stage before: export, profile) joins that point."""
    out: list[tuple[list[int], Row]] = []
    for i, row in enumerate(stages):
        sha = row.get("model_sha256")
        if out and sha and sha == out[-1][1].get("model_sha256"):
            out[-1][0].append(i)
        else:
            out.append(([i], row))
    return out


def _point_label(indices: list[int], row: Row, full: bool) -> str:
    if not full:
        return str(indices[0])
    same = f" (= {', '.join(map(str, indices[1:]))})" if len(indices) > 1 else ""
    return f"{indices[0]}: {stage_name(row, indices[0])}{same}" + (" (untrained)" if untrained(row) else "")


def _draw_stages(ax: Any, stages: Sequence[Row], x_key: str | Callable[[Row], Any], y_key: str,
                 style: str, legend: str, full_labels: bool = True,
                 apart_legend: str | None = "untrained stage (not joined)") -> list[float]:
    """One point per distinct model: trained stages joined in stage order, untrained ones drawn
    apart (crosses in the series' colour, not joined, labelled "untrained"; ``apart_legend``
    None: no legend entry). Returns the x values drawn."""
    x_of = x_key if callable(x_key) else (lambda r: r.get(x_key))
    points = [(idx, r, float(x_of(r)), 100 * float(r[y_key])) for idx, r in distinct_models(stages)
              if _number(x_of(r)) and _number(r.get(y_key))]
    curve = [p for p in points if not untrained(p[1])]
    apart = [p for p in points if untrained(p[1])]
    color = ax.plot([p[2] for p in curve], [p[3] for p in curve], style, label=legend)[0].get_color() \
        if curve else "0.45"
    if apart:
        ax.plot([p[2] for p in apart], [p[3] for p in apart], "x", color=color, markersize=9,
                linestyle="none", label=apart_legend or "_nolegend_")
    for j, (idx, row, x, y) in enumerate(points):
        ax.annotate(_point_label(idx, row, full_labels), (x, y), xytext=_OFFSETS[j % len(_OFFSETS)],
                    textcoords="offset points", fontsize=8, color="0.35" if untrained(row) else "black")
    return [p[2] for p in points]


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
            _draw_stages(ax, stages, x_key, y_key, style, legend, full_labels=n == 0,
                         apart_legend="untrained stage (not joined)" if n == 0 else None)
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


def _size(row: Row) -> Any:
    return row.get("stored_bytes", row.get("bytes"))


def _latency(row: Row) -> Any:
    value = row.get("onnx_latency_ms")
    return value if _number(value) else row.get("latency_ms")


def accuracy_latency_size_plot(stages: Sequence[Row], latency_label: str) -> bytes | None:
    """Two panels, accuracy against measured latency and against size, one point per stage;
    untrained stages drawn apart (:func:`_draw_stages`). None without accuracy and latency."""
    if not any(_number(_latency(r)) and _number(r.get("accuracy")) for r in stages):
        return None
    fig = Figure(figsize=(11.0, 4.6))
    panels = ((_latency, latency_label, False), (_size, "size as stored (bytes)", True))
    for k, (x_of, x_label, engineering) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        xs = _draw_stages(ax, stages, x_of, "accuracy", "-o", "trained stages, in order")
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if engineering:
            ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.set_xlabel(x_label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        if k == 0:
            ax.legend(fontsize=8)
    fig.suptitle("Accuracy vs measured latency and vs size per stage")
    return render_png(fig)


def merged_order(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """The layers of ``before`` in their order, each layer only ``after`` has placed right after
    the layer that precedes it in ``after`` (a replaced conv's parts stand where the conv stood)."""
    order, pos = list(dict.fromkeys(before)), -1
    for name in after:
        if name in order:
            pos = order.index(name)
        else:
            pos += 1
            order.insert(pos, name)
    return order


def layer_before_after_plot(before: Mapping[str, float], after: Mapping[str, float],
                            how: str) -> bytes | None:
    """Paired horizontal bars: ms per layer before and after compression (the slowest
    :data:`MAX_BARS` layers before, in execution order; layers only one side has get one bar)."""
    layers = merged_order(before, after)
    if not layers:
        return None
    if len(layers) > MAX_BARS:
        keep = set(sorted(layers, key=lambda k: -max(before.get(k, 0.0), after.get(k, 0.0)))[:MAX_BARS])
        layers = [k for k in layers if k in keep]
    fig = Figure(figsize=(7.4, 0.34 * len(layers) + 1.8))
    ax = fig.add_subplot()
    for j, (label, values, color) in enumerate((("before", before, "#fdae6b"), ("after", after, "#e6550d"))):
        ax.barh([y + (j - 0.5) * 0.4 for y in range(len(layers))], [values.get(k, 0.0) for k in layers],
                0.4, label=f"{label} (total {sum(values.values()):.3f} ms)", color=color)
    ax.set_yticks(list(range(len(layers))), layers, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per layer")
    ax.set_title("Latency per layer before and after compression\n" + "\n".join(textwrap.wrap(how, 90)),
                 fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
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
