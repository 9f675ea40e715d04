"""The report's error-category tables: why wrong greedy answers are wrong, per format, at a run's first and last
evaluation (error_categories.py defines the categories; evaluate.py writes them as datasets.NAME.
error_categories in eval/step_N.json). report.py puts the tables on its page."""

from __future__ import annotations

import html

from .error_categories import CATEGORIES
from .formats import LABELS


def _cell(table: dict, label: str, category: str) -> str:
    row = table.get(label) or {}
    share = (row.get("share") or {}).get(category)
    return "" if share is None else f"{share:.0%} ({row['counts'][category]})"


def error_tables(runs: list[tuple[str, list[dict]]]) -> str:
    """HTML: for each run (name, its eval/step_N.json records sorted by step) and each dataset with error
    categories, one table: a row per format and evaluation (first and last), a column per category giving its
    share of that format's wrong greedy answers (and their count). A note when no run has any."""
    e = html.escape
    parts = []
    for name, evals in runs:
        datasets = list(dict.fromkeys(ds for ev in evals for ds, rec in ev.get("datasets", {}).items()
                                      if rec.get("error_categories")))
        for ds in datasets:
            steps = [ev for ev in evals if (ev.get("datasets", {}).get(ds) or {}).get("error_categories")]
            picked = [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]
            head = "<tr><th>step</th><th>format</th><th>wrong</th>" + "".join(f"<th>{e(c)}</th>" for c in CATEGORIES)
            rows = []
            for ev in picked:
                table = ev["datasets"][ds]["error_categories"]
                for label in (*LABELS, "all"):
                    if not (table.get(label) or {}).get("wrong"):
                        continue
                    cells = [str(ev["step"]), label, str(table[label]["wrong"])]
                    cells += [_cell(table, label, c) for c in CATEGORIES]
                    rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
            parts.append(f"<h3>{e(name)}: {e(ds)}</h3><table>{head}</tr>{''.join(rows)}</table>")
    if not parts:
        return "<p>No evaluation has error categories (only synthetic datasets have them).</p>"
    return ("<p>Why each wrong greedy answer is wrong, at the first and last evaluation: the share of the format's "
            "wrong answers in each category (count). Categories and their order: error_categories.py.</p>"
            + "".join(parts))
