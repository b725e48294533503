"""Reads a matplotlib figure back into chart data (E2B's ``e2b/chart`` format).

    {"type": "line"|"scatter"|"bar"|"pie"|"box_and_whisker"|"superchart"|"unknown",
     "title": str|None, "elements": [...], ...}

Line and scatter charts add x/y labels, units, ticks, tick labels and scales,
and elements ``{"label", "points": [[x, y], ...]}``; bar charts add elements
``{"label", "group", "value"}``; pie charts ``{"label", "angle", "radius"}``;
box plots ``{"label", "min", "first_quartile", "median", "third_quartile",
"max", "outliers"}``. A figure with several axes is a ``superchart`` whose
elements are the charts of its axes.
"""

import re
from datetime import date, datetime

_UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")


def _text(value):
    return value if value else None


def _unit(label):
    if not label:
        return None
    m = _UNIT.search(label)
    return (m.group(1) or m.group(2)) if m else None


def _value(v):
    import numpy as np

    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, np.datetime64):
        return str(v.astype("datetime64[s]"))
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_grid_line(line):
    x, y = line.get_xdata(), line.get_ydata()
    if len(x) != 2 or len(y) != 2:
        return False
    return x[0] == x[1] or y[0] == y[1]


def _kind(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch, Rectangle, Wedge
    from matplotlib.text import Text

    children = [c for c in ax.get_children() if not isinstance(c, Text)]
    # Axes furniture (spines, the background patch, axes) is not data.
    children = [c for c in children if c not in ax.spines.values()]
    children = [c for c in children if c is not ax.patch and c not in (ax.xaxis, ax.yaxis)]
    children = [c for c in children if type(c).__name__ not in ("Legend",)]
    if not children:
        return "unknown"
    if all(isinstance(c, Line2D) for c in children):
        return "line"
    if all(isinstance(c, (PathPatch, Line2D)) for c in children) and any(
        isinstance(c, PathPatch) for c in children
    ):
        return "box_and_whisker"
    data = [c for c in children if not (isinstance(c, Line2D) and _is_grid_line(c))]
    if data and all(isinstance(c, PathCollection) for c in data):
        return "scatter"
    if data and all(isinstance(c, Wedge) for c in data):
        return "pie"
    if data and all(isinstance(c, Rectangle) for c in data):
        return "bar"
    return "unknown"


def _base(ax, kind):
    return {"type": kind, "title": _text(ax.get_title()), "elements": []}


def _axes_2d(ax, chart):
    x_label, y_label = _text(ax.get_xlabel()), _text(ax.get_ylabel())
    chart.update(
        x_label=x_label, y_label=y_label, x_unit=_unit(x_label), y_unit=_unit(y_label)
    )


def _swap_axes(chart):
    chart["x_label"], chart["y_label"] = chart["y_label"], chart["x_label"]
    chart["x_unit"], chart["y_unit"] = chart["y_unit"], chart["x_unit"]


def _ticks(ax, axis):
    import matplotlib.dates as mdates

    a = ax.xaxis if axis == "x" else ax.yaxis
    ticks = list(a.get_ticklocs())
    labels = [t.get_text() for t in a.get_ticklabels()]
    scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
    converter = a.get_converter() if hasattr(a, "get_converter") else a.converter
    is_date = isinstance(converter, (mdates.DateConverter, mdates._SwitchableDateConverter)) if hasattr(
        mdates, "_SwitchableDateConverter"
    ) else isinstance(converter, mdates.DateConverter)
    if is_date:
        return [mdates.num2date(t).isoformat() for t in ticks], labels, "datetime"
    ticks = [float(t) for t in ticks]
    if scale == "linear" and ticks and all(
        t == i and str(i) != label for i, (t, label) in enumerate(zip(ticks, labels))
    ):
        scale = "categorical"
    return ticks, labels, scale


def _point_chart(ax, kind):
    chart = _base(ax, kind)
    _axes_2d(ax, chart)
    for axis in ("x", "y"):
        ticks, labels, scale = _ticks(ax, axis)
        chart[f"{axis}_ticks"], chart[f"{axis}_tick_labels"], chart[f"{axis}_scale"] = ticks, labels, scale
    if kind == "line":
        for i, line in enumerate(ax.get_lines()):
            if _is_grid_line(line):
                continue
            label = line.get_label()
            if label.startswith("_child"):
                label = f"Line {label[6:]}"
            points = [[_value(x), _value(y)] for x, y in zip(line.get_xdata(), line.get_ydata())]
            chart["elements"].append({"label": label, "points": points})
    else:
        for collection in ax.collections:
            points = [[_value(x), _value(y)] for x, y in collection.get_offsets()]
            chart["elements"].append({"label": collection.get_label(), "points": points})
    return chart


def _bar_chart(ax):
    chart = _base(ax, "bar")
    _axes_2d(ax, chart)
    for container in ax.containers:
        group = container.get_label()
        if group.startswith("_container"):
            group = f"Group {group[10:]}"
        rects = list(container)
        heights = [r.get_height() for r in rects]
        if rects and all(h == heights[0] for h in heights) and len(rects) > 1:
            # Horizontal bars: the values are widths, the labels are on y.
            labels = [t.get_text() for t in ax.get_yticklabels()]
            values = [r.get_width() for r in rects]
            _swap_axes(chart)
        else:
            labels = [t.get_text() for t in ax.get_xticklabels()]
            values = heights
        for label, value in zip(labels, values):
            chart["elements"].append({"label": label, "group": group, "value": _value(value)})
    return chart


def _pie_chart(ax):
    chart = _base(ax, "pie")
    for wedge in ax.patches:
        chart["elements"].append(
            {
                "label": wedge.get_label(),
                "angle": round(abs(float(wedge.theta2) - float(wedge.theta1)), 8),
                "radius": float(wedge.r),
            }
        )
    return chart


def _box_chart(ax):
    chart = _base(ax, "box_and_whisker")
    _axes_2d(ax, chart)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    boxes = []
    for label, patch in zip(labels, ax.patches):
        v = patch.get_path().vertices
        xs, ys = [round(float(x), 8) for x in v[:, 0]], [round(float(y), 8) for y in v[:, 1]]
        boxes.append(
            {"label": label, "x0": min(xs), "x1": max(xs), "y0": min(ys), "y1": max(ys), "outliers": []}
        )
    vertical = len(boxes) > 1 and all(b["y1"] - b["y0"] == boxes[0]["y1"] - boxes[0]["y0"] for b in boxes)
    if vertical:
        _swap_axes(chart)
        for b in boxes:
            b["x0"], b["y0"], b["x1"], b["y1"] = b["y0"], b["x0"], b["y1"], b["x1"]
    for line in ax.lines:
        xs = [round(float(x), 8) for x in line.get_xdata()]
        ys = [round(float(y), 8) for y in line.get_ydata()]
        if vertical:
            xs, ys = ys, xs
        for b in boxes:
            if not xs or not (b["x0"] <= xs[0] <= b["x1"]):
                continue
            if len(xs) == 1 or (len(set(xs)) == 1 and len(ys) > 2):
                b["outliers"].extend(ys)
            elif len(ys) == 2 and ys[0] == ys[1] and b["y0"] <= ys[0] <= b["y1"]:
                b["median"] = ys[0]
            elif len(ys) == 2 and max(ys) == b["y0"]:
                b["min"] = min(ys)
            elif len(ys) == 2 and min(ys) == b["y1"]:
                b["max"] = max(ys)
            break
    for b in boxes:
        chart["elements"].append(
            {
                "label": b["label"],
                "min": b.get("min", b["y0"]),
                "first_quartile": b["y0"],
                "median": b.get("median", (b["y0"] + b["y1"]) / 2),
                "third_quartile": b["y1"],
                "max": b.get("max", b["y1"]),
                "outliers": b["outliers"],
            }
        )
    return chart


def axes_to_chart(ax):
    kind = _kind(ax)
    if kind in ("line", "scatter"):
        return _point_chart(ax, kind)
    if kind == "bar":
        return _bar_chart(ax)
    if kind == "pie":
        return _pie_chart(ax)
    if kind == "box_and_whisker":
        return _box_chart(ax)
    return _base(ax, "unknown")


def figure_to_chart(figure):
    axes = figure.get_axes()
    if not axes or not any(ax.has_data() for ax in axes):
        return None
    if len(axes) > 1:
        title = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) else None
        return {"type": "superchart", "title": title or None, "elements": [axes_to_chart(ax) for ax in axes]}
    return axes_to_chart(axes[0])
