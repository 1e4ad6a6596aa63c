"""A model card as one self-contained HTML page, from `card.card_facts`.

Every value is HTML-escaped where it is written (`esc`), whatever its source: metadata,
audit reasons and spec text are all treated as untrusted. The page has no script and
fetches nothing; its only style is the inline block below, allowed by its hash in `CSP`,
so the page works under a policy that refuses every inline script and any other style.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from typing import Any

from backend.ml.registry import card
from backend.ml.registry.card import Facts

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2733;
background:#f4f6f8}
main{max-width:60rem;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:1.75rem 0 .5rem;
border-bottom:1px solid #d5dbe1;padding-bottom:.25rem}
.sub{color:#556270;margin:0}
dl{display:grid;grid-template-columns:minmax(10rem,max-content) 1fr;gap:.25rem 1rem;margin:0}
dt{color:#556270}dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d5dbe1;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#e9edf1;font-weight:600}
.wrap{overflow-x:auto}
.state{display:inline-block;padding:0 .5rem;border-radius:1rem;background:#e9edf1}
.state-production{background:#d4f0dc}
code{font-size:.9em}
""".strip()
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode()
# The page's own policy: no scripts at all, only its inline style, nothing from elsewhere.
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pairs(items: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], label: str) -> str:
    heads = "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f'<div class="wrap"><table aria-label="{esc(label)}"><thead><tr>{heads}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>")


def section(key: str, heading: str, content: str) -> str:
    return (f'<section id="{key}" aria-labelledby="{key}-h"><h2 id="{key}-h">{esc(heading)}'
            f"</h2>{content}</section>")


def render_html(facts: Facts) -> str:
    gate = card.gate_lines(facts["gate"])
    slices = (table(card.SLICE_HEAD, [card.slice_cells(r) for r in facts["slices"]],
                    "Slices") if facts["slices"] else
              "<p>" + esc("No slice numbers recorded (slice columns: "
                          f"{', '.join(facts['slice_columns']) or 'none'}).") + "</p>")
    parts = [
        section("purpose", "Purpose", f"<p>{esc(facts['description'])}</p>"),
        section("data", "Data", pairs(card.data_lines(facts))),
        section("metric", "Metric and promotion gate",
                pairs(card.metric_lines(facts)) + (
                    pairs(gate) if gate else
                    "<p>No gate decision is recorded for this version.</p>")),
        section("slices", "Slices", slices),
    ]
    if facts["shadow"] is not None:
        parts.append(section("shadow", "Shadow scoring",
                             pairs(card.shadow_lines(facts["shadow"]))))
    history = facts["alias_history"]
    parts += [
        section("features", "Features (training reference statistics)",
                table(["Feature", "Kind", "Reference", "Missing"],
                      [card.feature_cells(r) for r in facts["features"]], "Features")),
        section("params", "Parameters",
                table(["Parameter", "Value"], card.param_rows(facts), "Parameters")),
        section("integrity", "Integrity and libraries",
                pairs(card.integrity_lines(facts))
                + table(["Library", "Version"], sorted(facts["libraries"].items()),
                        "Libraries")),
        section("aliases", "Alias history",
                table(card.ALIAS_HEAD, [card.alias_cells(m) for m in history],
                      "Alias history") if history else
                "<p>Never promoted: this version has not served.</p>"),
    ]
    state = esc(facts["state"])
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Model card: {esc(card.title(facts))}</title>\n"
            '<link rel="icon" href="data:,">\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            f'<h1>Model card: <code>{esc(facts["model"])}</code> {esc(facts["version"])} '
            f'<span class="state state-{state}">{state}</span></h1>\n'
            f'<p class="sub">{esc(card.subtitle(facts))}</p>\n'
            + "\n".join(parts) + "\n</main>\n</body>\n</html>\n")
