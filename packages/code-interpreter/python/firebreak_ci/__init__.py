"""IPython extension loaded into every Python kernel of the code interpreter.

- Rich results as E2B's clients read them: pandas DataFrames also carry
  ``e2b/data`` (columns as lists), matplotlib figures also carry ``e2b/chart``
  (chart type, labels, ticks and the plotted data), dicts and lists carry
  ``application/json``.
- numpy, pandas and matplotlib are imported while a default context's kernel
  starts (FIREBREAK_CI_PRELOAD=1; before the template snapshot is taken), so a
  cell's ``import pandas`` is instant there. Other contexts start lighter.
- PIL's ``Image.show()`` displays the image instead of looking for a viewer.
"""

import json
import sys


def _to_jsonable(value):
    """json.dumps default: numpy scalars and arrays, dates, anything with isoformat."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _dataframe_data(obj):
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(obj, pd.DataFrame):
        return None
    columns = obj.to_dict(orient="list")
    out = {}
    for key, values in columns.items():
        out[str(key)] = [
            v.isoformat() if isinstance(v, pd.Timestamp) else v for v in values
        ]
    # Through JSON once: numpy scalars become plain numbers, NaN stays NaN.
    return json.loads(json.dumps(out, default=_to_jsonable))


def _figure_chart(obj):
    if sys.modules.get("matplotlib") is None:
        return None
    from matplotlib.figure import Figure

    if not isinstance(obj, Figure):
        return None
    from .charts import figure_to_chart

    try:
        chart = figure_to_chart(obj)
    except Exception:  # a chart we cannot read still has its PNG
        return None
    if chart is None:
        return None
    return json.loads(json.dumps(chart, default=_to_jsonable))


def _json_value(obj):
    if not isinstance(obj, (list, dict)):
        return None
    try:
        return json.loads(json.dumps(obj, default=_to_jsonable))
    except (TypeError, ValueError):
        return None


def _register(ip):
    from IPython.core.formatters import BaseFormatter
    from IPython.core.formatters import JSONFormatter as IPythonJSONFormatter
    from traitlets import ObjectName, Unicode

    class DataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict,)

        def __call__(self, obj):
            data = _dataframe_data(obj)
            return data if data is not None else super().__call__(obj)

    class ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict,)

        def __call__(self, obj):
            chart = _figure_chart(obj)
            return chart if chart is not None else super().__call__(obj)

    formatters = ip.display_formatter.formatters
    formatters["e2b/data"] = DataFormatter(parent=ip.display_formatter)
    formatters["e2b/chart"] = ChartFormatter(parent=ip.display_formatter)

    class JSONFormatter(IPythonJSONFormatter):
        def __call__(self, obj):
            value = _json_value(obj)
            if value is not None:
                return value, {"expanded": True}
            return super().__call__(obj)

    formatters["application/json"] = JSONFormatter(parent=ip.display_formatter)


def _preload():
    for name in ("numpy", "pandas", "matplotlib", "matplotlib.pyplot"):
        try:
            __import__(name)
        except Exception:
            pass


def _patch_pil():
    try:
        from PIL import Image
        from IPython.display import display
    except Exception:
        return

    def show(self, title=None):
        display(self)

    Image.Image.show = show


def load_ipython_extension(ip):
    import os

    _register(ip)
    if os.environ.pop("FIREBREAK_CI_PRELOAD", "") == "1":
        _preload()
    _patch_pil()
