"""A model card for one stored version: the facts gathered once (`card_facts`) and rendered
as Markdown here, or as a self-contained HTML page (`card_html.render_html`).

The facts come from three places, each the one truth for its part:
    the version's signed metadata   data window, scores, parameters, feature statistics
    the history's version entries   the promotion gate's decision and its evidence
    the registry audit              who promoted or rolled the version back, when, why
and the spec (purpose, table, target, features, slices). Keys a newer writer adds to the
metadata (`training_data`, `model_hash`) are shown when present and skipped when absent; so
are the gate's per-slice numbers and a shadow-scoring summary the caller passes in.

Not done here: the signature check of the model file (a card describes a version; loading
one is `ModelStore.load`'s job). The metadata's own signature is checked and reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backend.ml.fleet.specs import get_spec
from backend.ml.history import History
from backend.ml.registry.store import ModelStore, StoreError

Facts = dict[str, Any]
TOP_CATEGORIES = 3  # a categorical feature's most frequent values shown on the card
DECILES = 9  # reference_stats keeps the 9 inner decile edges when they are all distinct


def feature_summary(name: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """The main numbers of one feature's reference statistics (not its histogram)."""
    row: dict[str, Any] = {"name": name, "kind": stats.get("kind", "?"),
                           "missing": stats.get("missing")}
    if row["kind"] == "categorical":
        shares = stats.get("shares") or {}
        ranked = sorted(((k, v) for k, v in shares.items() if k != "__other__"),
                        key=lambda kv: -float(kv[1]))
        row["categories"] = len(ranked)
        row["top"] = [{"value": k, "share": v} for k, v in ranked[:TOP_CATEGORIES]]
        row["missing"] = shares.get("__missing__", 0.0)
        return row
    edges = stats.get("edges") or []
    row.update(mean=stats.get("mean"), std=stats.get("std"))
    # with ties the quantiles collapse and the edges are no longer deciles: say nothing then
    if len(edges) == DECILES:
        row.update(p10=edges[0], p50=edges[4], p90=edges[8])
    return row


def gate_of(history: History, name: str, version: str) -> dict[str, Any] | None:
    """The gate's decision recorded with this version (the newest entry naming it)."""
    entries = [e for e in history.model_versions(name) if e.get("version") == version]
    gate = entries[-1].get("gate") if entries else None
    return dict(gate) if isinstance(gate, Mapping) else None


def slice_rows(gate: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per-slice numbers when the gate kept them, else its worst slice alone."""
    if gate is None:
        return []
    kept = gate.get("slices")
    if isinstance(kept, Sequence) and not isinstance(kept, str):
        return [dict(s) for s in kept if isinstance(s, Mapping)]
    worst = gate.get("worst_slice")
    return [dict(worst)] if isinstance(worst, Mapping) else []


def alias_history(store: ModelStore, name: str, version: str) -> list[dict[str, Any]]:
    """Audit entries that made this version serve or stopped it serving, oldest first."""
    moves = []
    for entry in reversed(store.audit(None, name=name)):
        if entry.get("to") == version:
            role = "became production"
        elif entry.get("from") == version:
            role = "replaced"
        else:
            continue
        moves.append({"at": entry.get("at"), "action": entry.get("action"), "role": role,
                      "from": entry.get("from"), "to": entry.get("to"),
                      "actor": entry.get("actor"), "reason": entry.get("reason")})
    return moves


def signature_state(store: ModelStore, meta: Mapping[str, Any]) -> str:
    try:
        problem = store.signer.problem(meta)
    except StoreError as exc:  # no key to check with
        return f"not checked: {exc}"
    return "valid" if problem is None else f"invalid: {problem}"


def card_facts(store: ModelStore, history: History, name: str, version: str, *,
               shadow: Mapping[str, Any] | None = None) -> Facts:
    """Everything a card shows, as plain data. Raises UnknownModelError for a name that is
    not a model and UnknownVersionError for a version that is malformed or not stored."""
    spec = get_spec(name)
    meta = store.metadata(name, version)
    states = {v: state for state, v in store.aliases(name).items() if v is not None}
    gate = gate_of(history, name, version)
    stats = meta.get("feature_stats") or {}
    training_data = meta.get("training_data")
    return {
        "model": name, "version": version, "state": states.get(version, "candidate"),
        "group": spec.group, "task": spec.task, "description": spec.description,
        "table": spec.table, "target": spec.target, "created_at": meta.get("created_at"),
        "run_id": meta.get("run_id"), "strategy": meta.get("strategy"),
        "data": {k: meta.get(k) for k in ("data_start", "data_end", "holdout_start",
                                          "rows_train", "rows_holdout", "data_fingerprint")},
        "training_data": dict(training_data) if isinstance(training_data, Mapping) else None,
        "performance": {k: meta.get(k) for k in ("metric", "score", "baseline", "lift",
                                                 "threshold", "passed")},
        "gate": gate, "slices": slice_rows(gate), "slice_columns": list(spec.slices),
        "features": [feature_summary(f, stats[f]) if isinstance(stats.get(f), Mapping)
                     else {"name": f, "kind": "no statistics"} for f in spec.features],
        "params": dict(meta.get("params") or {}),
        "libraries": dict(meta.get("libraries") or {}),
        "integrity": {"format": meta.get("format"), "sha256": meta.get("sha256"),
                      "model_hash": meta.get("model_hash"),
                      "key_id": meta.get("key_id"),
                      "signature": signature_state(store, meta)},
        "alias_history": alias_history(store, name, version),
        "shadow": dict(shadow) if shadow is not None else None,
    }


# ---- shared wording ------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """A number as people read it; an absent value as an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def param_text(value: Any) -> str:
    """A parameter exactly enough to refit with (a tolerance of 1e-07 is not 0.0000)."""
    return f"{value:g}" if isinstance(value, float) else fmt(value)


def param_rows(facts: Facts) -> list[tuple[str, str]]:
    return [(k, param_text(v)) for k, v in sorted(facts["params"].items())]


def signed(value: Any) -> str:
    return f"{value:+.4f}" if isinstance(value, int | float) else fmt(value)


def gate_lines(gate: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(label, text) pairs of the gate's decision; none for a version recorded without."""
    if gate is None:
        return []
    lines = [("Decision", ("promoted" if gate.get("promoted") else "held")
              + (", below its threshold" if gate.get("below_threshold") else "")),
             ("Why", fmt(gate.get("decision"))),
             ("Production on the same holdout", fmt(gate.get("production_score_on_holdout")))]
    interval = gate.get("interval")
    if isinstance(interval, Mapping):
        confidence = interval.get("confidence")
        level = f"{confidence:.0%}" if isinstance(confidence, int | float) else "?"
        lines.append(("Candidate \u2212 production", (
            f"{signed(interval.get('difference'))}, {level} interval "
            f"[{signed(interval.get('low'))}, {signed(interval.get('high'))}] over "
            f"{fmt(interval.get('resamples'))} resamples")))
    return lines


def window(facts: Facts) -> str:
    data = facts["data"]
    return f"{fmt(data['data_start'])} \u2026 {fmt(data['data_end'])}"


def shadow_lines(shadow: Mapping[str, Any]) -> list[tuple[str, str]]:
    agreement = shadow.get("agreement")
    return [("Candidate", fmt(shadow.get("candidate"))),
            ("Rows compared", fmt(shadow.get("compared"))),
            ("Rows agreeing", fmt(shadow.get("agreed"))),
            ("Agreement", f"{agreement:.1%}" if isinstance(agreement, int | float)
             else "\u2014"),
            ("Dropped", fmt(shadow.get("dropped"))), ("Timeouts", fmt(shadow.get("timeouts")))]


def feature_cells(row: Mapping[str, Any]) -> list[str]:
    """Name, kind, then the main numbers of one feature as short texts."""
    if row["kind"] == "categorical":
        top = ", ".join(f"{t['value']} {float(t['share']):.0%}" for t in row["top"])
        return [row["name"], "categorical", f"{row['categories']} values; top {top}",
                f"{float(row.get('missing') or 0):.1%}"]
    if row["kind"] == "numeric":
        spread = (f"p10 {fmt(row['p10'], 2)} \u00b7 median {fmt(row['p50'], 2)} \u00b7 "
                  f"p90 {fmt(row['p90'], 2)}" if "p10" in row else "deciles tie")
        return [row["name"], "numeric", f"mean {fmt(row.get('mean'), 2)} \u00b1 "
                f"{fmt(row.get('std'), 2)}; {spread}", f"{float(row.get('missing') or 0):.1%}"]
    return [row["name"], row["kind"], "\u2014", "\u2014"]


SLICE_HEAD = ["Column", "Value", "Candidate \u2212 production", "Rows"]


def slice_cells(row: Mapping[str, Any]) -> list[str]:
    return [fmt(row.get("column")), fmt(row.get("value")), signed(row.get("difference")),
            fmt(row.get("rows"))]


ALIAS_HEAD = ["When", "Action", "This version", "Move", "By", "Why"]


def alias_cells(move: Mapping[str, Any]) -> list[str]:
    return [fmt(move["at"]), fmt(move["action"]), move["role"],
            f"{move['from'] or 'none'} \u2192 {move['to']}", fmt(move["actor"]),
            fmt(move["reason"])]


def training_data_lines(found: Mapping[str, Any]) -> list[tuple[str, str]]:
    span = found.get("window")
    span_text = (f"{fmt(span[0])} \u2026 {fmt(span[1])}"
                 if isinstance(span, Sequence) and not isinstance(span, str) and len(span) == 2
                 else fmt(span))
    return [("Training table", fmt(found.get("table"))), ("Training window", span_text),
            ("Training rows", fmt(found.get("rows"))),
            ("Training content SHA-256", fmt(found.get("content_sha256")))]


def data_lines(facts: Facts) -> list[tuple[str, str]]:
    data = facts["data"]
    lines = [("Source table", facts["table"]), ("Target", facts["target"]),
             ("Data window", window(facts)), ("Holdout from", fmt(data["holdout_start"])),
             ("Rows (train / holdout)",
              f"{fmt(data['rows_train'])} / {fmt(data['rows_holdout'])}"),
             ("Data fingerprint", fmt(data["data_fingerprint"]))]
    if facts["training_data"] is not None:
        lines += training_data_lines(facts["training_data"])
    return lines


def metric_lines(facts: Facts) -> list[tuple[str, str]]:
    perf = facts["performance"]
    return [("Metric", fmt(perf["metric"])), ("Score (holdout)", fmt(perf["score"])),
            ("Baseline (naive)", fmt(perf["baseline"])), ("Lift", signed(perf["lift"])),
            ("Threshold", fmt(perf["threshold"], 2)), ("Passed threshold", fmt(perf["passed"]))]


def integrity_lines(facts: Facts) -> list[tuple[str, str]]:
    found = facts["integrity"]
    lines = [("Format", fmt(found["format"])), ("Model file SHA-256", fmt(found["sha256"]))]
    if found["model_hash"] is not None:
        lines.append(("Model hash", fmt(found["model_hash"])))
    return lines + [("Signing key", fmt(found["key_id"])),
                    ("Metadata signature", found["signature"])]


def title(facts: Facts) -> str:
    return f"{facts['model']} {facts['version']}"


def subtitle(facts: Facts) -> str:
    return (f"{facts['state']} \u00b7 {facts['group']} \u00b7 {facts['task']} \u00b7 trained "
            f"{fmt(facts['created_at'])} in run {fmt(facts['run_id'])} "
            f"(strategy {fmt(facts['strategy'])})")


# ---- Markdown ------------------------------------------------------------------------------


def md(value: Any) -> str:
    """Text safe inside a Markdown table cell or line: one line, pipes escaped, and no
    HTML a Markdown viewer would render."""
    text = " ".join(str(value).split())
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;")
            .replace("<", "&lt;").replace(">", "&gt;"))


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(md(h) for h in head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(md(c) for c in row) + " |" for row in rows), ""]


def md_pairs(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [*(f"- **{md(label)}**: {md(text)}" for label, text in pairs), ""]


def render_markdown(facts: Facts) -> str:
    out = [f"# Model card: {md(title(facts))}", "", md(subtitle(facts)), "",
           "## Purpose", "", md(facts["description"]), "",
           "## Data", "", *md_pairs(data_lines(facts)),
           "## Metric and promotion gate", "", *md_pairs(metric_lines(facts))]
    gate = gate_lines(facts["gate"])
    out += md_pairs(gate) if gate else ["No gate decision is recorded for this version.", ""]
    out += ["## Slices", ""]
    out += (md_table(SLICE_HEAD, [slice_cells(r) for r in facts["slices"]])
            if facts["slices"] else [md("No slice numbers recorded (slice columns: "
                                        f"{', '.join(facts['slice_columns']) or 'none'})."),
                                     ""])
    if facts["shadow"] is not None:
        out += ["## Shadow scoring", "", *md_pairs(shadow_lines(facts["shadow"]))]
    out += ["## Features (training reference statistics)", "",
            *md_table(["Feature", "Kind", "Reference", "Missing"],
                      [feature_cells(r) for r in facts["features"]]),
            "## Parameters", "",
            *md_table(["Parameter", "Value"], param_rows(facts)),
            "## Integrity and libraries", "", *md_pairs(integrity_lines(facts)),
            *md_table(["Library", "Version"], sorted(facts["libraries"].items())),
            "## Alias history", ""]
    out += (md_table(ALIAS_HEAD, [alias_cells(m) for m in facts["alias_history"]])
            if facts["alias_history"] else ["Never promoted: this version has not served.",
                                            ""])
    return "\n".join(out).rstrip() + "\n"
