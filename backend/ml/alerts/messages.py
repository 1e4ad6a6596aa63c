"""What an alert says: the e-mail subject, its plain-text and HTML bodies, and the
dashboard link, from the alert as the history recorded it (kind, level, model, message,
score, threshold, attempts and any other details)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

SUBJECT_PREFIX = "[ML scheduler]"
# Shown by name in the message; the rest of a record's details follow, in order.
NAMED = ("id", "level", "kind", "model", "message", "timestamp", "score", "live_score",
         "threshold", "attempts", "error")


def dashboard_link(record: Mapping[str, Any], dashboard_url: str) -> str:
    base = dashboard_url.split("#", 1)[0]
    return f"{base}#model-{record['model']}" if record.get("model") else base


def subject(record: Mapping[str, Any]) -> str:
    model = f": {record['model']}" if record.get("model") else ""
    return f"{SUBJECT_PREFIX} {str(record.get('level', '')).upper()} {record.get('kind')}{model}"


def number(value: Any) -> str:
    return str(round(value, 4)) if isinstance(value, float) else str(value)


def _attempts(value: Any) -> list[str]:
    """A retry list (monitor: attempt, strategy, score, promoted) as lines; an int as is."""
    if not isinstance(value, list):
        return [str(value)]
    lines = []
    for item in value:
        if not isinstance(item, Mapping):
            lines.append(str(item))
            continue
        score = item.get("score")
        lines.append(f"attempt {item.get('attempt', '?')} ({item.get('strategy', '?')}): "
                     f"score {'-' if score is None else number(score)}, "
                     f"{'promoted' if item.get('promoted') else 'not promoted'}")
    return lines


def facts(record: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(label, lines) pairs for the alert's body, in reading order, only those present."""
    rows: list[tuple[str, list[str]]] = [("Alert", [str(record.get("kind"))]),
                                         ("Level", [str(record.get("level"))])]
    if record.get("model"):
        rows.append(("Model", [str(record["model"])]))
    rows.append(("Message", [str(record.get("message", ""))]))
    for key, label in (("score", "Score"), ("live_score", "Live score"),
                       ("threshold", "Threshold")):
        if record.get(key) is not None:
            rows.append((label, [number(record[key])]))
    if record.get("attempts") not in (None, [], 0):
        rows.append(("Attempts", _attempts(record["attempts"])))
    if record.get("error"):
        rows.append(("Error", [str(record["error"])]))
    for key, value in record.items():
        if key not in NAMED and value is not None:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((key, [number(value) if isinstance(value, float) else text]))
    rows.append(("Time", [str(record.get("timestamp"))]))
    return rows


def plain_body(record: Mapping[str, Any], link: str) -> str:
    lines = []
    for label, values in facts(record):
        if len(values) == 1:
            lines.append(f"{label}: {values[0]}")
        else:
            lines += [f"{label}:", *(f"  {value}" for value in values)]
    return "\n".join([*lines, "", f"Dashboard: {link}", ""])


def html_body(record: Mapping[str, Any], link: str) -> str:
    rows = "".join(
        f'<tr><th align="left" valign="top">{html.escape(label)}</th>'
        f"<td>{'<br>'.join(html.escape(v) for v in values)}</td></tr>"
        for label, values in facts(record))
    return (f"<html><body><h3>{html.escape(subject(record))}</h3><table>{rows}</table>"
            f'<p><a href="{html.escape(link, quote=True)}">Open the dashboard</a> '
            f"({html.escape(link)})</p></body></html>")
