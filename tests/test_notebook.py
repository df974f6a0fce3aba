"""The example notebook runs top to bottom: its code cells in order, in one namespace, as a kernel would."""
import json
from pathlib import Path

import plotly.graph_objects as go

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_methods.ipynb"


def test_the_example_notebook_runs(runs_dir):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace, figures = {"__name__": "__main__"}, []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        *body, last = source.rstrip().split("\n")
        exec(compile("\n".join(body), f"cell {index}", "exec"), namespace)  # noqa: S102 - our own notebook
        try:  # the last line's value is what a notebook displays
            shown = eval(compile(last, f"cell {index}", "eval"), namespace)  # noqa: S307
        except SyntaxError:
            exec(compile(last, f"cell {index}", "exec"), namespace)  # noqa: S102
            continue
        if isinstance(shown, go.Figure):
            figures.append(shown)
    assert len(figures) == 3 and all(len(figure.data) >= 3 for figure in figures)
    assert len(namespace["runs"]) == 3 and (runs_dir / "sweeps").is_dir()
