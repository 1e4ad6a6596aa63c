"""Model cards: `GET /ml/models/{name}/versions/{version}/card` as HTML and Markdown, checked
against the stored metadata, the history's gate decision and the audit of a trained setup."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app.routes.cards import wants_markdown
from backend.ml.config import Settings
from backend.ml.registry import card, card_html
from backend.ml.runs.services import Services
from tests.app.conftest import ClientFactory, error

MODEL = "supplier_performance"  # trained twice: v0001 was replaced by v0002
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> | &amp;'
MD = {"Accept": "text/markdown"}


def card_path(version: str, name: str = MODEL) -> str:
    return f"/ml/models/{name}/versions/{version}/card"


def services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_html_card_shows_the_stored_facts(shared_client: TestClient) -> None:
    store = services(shared_client).store
    production = store.aliases(MODEL)["production"]
    assert production is not None
    meta = store.metadata(MODEL, production)
    response = shared_client.get(card_path(production))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == card_html.CSP
    assert "script-src" not in card_html.CSP and "default-src 'none'" in card_html.CSP
    page = parse(response.text)
    text = " ".join(page.text)
    # self-contained: no script, nothing fetched from anywhere
    assert not [t for t, _ in page.tags if t == "script"]
    assert all(not (a.get("src") or "").startswith(("http", "/")) for _, a in page.tags)
    assert [a["href"] for t, a in page.tags if t == "link"] == ["data:,"]
    for expected in (f"{meta['score']:.4f}", f"{meta['baseline']:.4f}",
                     meta["data_fingerprint"], meta["sha256"], meta["data_start"],
                     meta["holdout_start"], f"{meta['rows_train']:,}",
                     meta["libraries"]["scikit-learn"], "production", "valid",
                     "became production"):
        assert str(expected) in text, expected
    for feature in meta["feature_stats"]:
        assert feature in text
    for param, value in meta["params"].items():
        assert param in text and card.param_text(value) in text
    gate = [e for e in services(shared_client).history.model_versions(MODEL)
            if e["version"] == production][-1]["gate"]
    assert gate["decision"] in text
    if gate.get("interval"):
        assert "interval" in text and f"{gate['interval']['low']:+.4f}" in text


def test_markdown_card_when_the_client_prefers_it(shared_client: TestClient) -> None:
    store = services(shared_client).store
    meta = store.metadata(MODEL, "v0001")
    response = shared_client.get(card_path("v0001"), headers=MD)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    body = response.text
    assert body.startswith(f"# Model card: {MODEL} v0001\n")
    assert "previous" in body.splitlines()[2]  # replaced by v0002, its state says so
    assert f"- **Score (holdout)**: {meta['score']:.4f}" in body
    assert f"- **Data fingerprint**: {meta['data_fingerprint']}" in body
    assert "| became production |" in body and "| replaced |" in body
    for heading in ("## Purpose", "## Data", "## Metric and promotion gate", "## Slices",
                    "## Features", "## Parameters", "## Integrity and libraries",
                    "## Alias history"):
        assert heading in body
    assert "## Shadow scoring" not in body  # not given: the section is left out


@pytest.mark.parametrize(("accept", "markdown"), [
    (None, False), ("*/*", False), ("text/html", False), ("text/markdown", True),
    ("text/html, text/markdown", False), ("text/html;q=0.5, text/markdown", True),
    ("text/markdown;q=0.2, text/*;q=0.9", False), ("text/markdown;q=abc", False),
])
def test_accept_header_chooses(accept: str | None, markdown: bool) -> None:
    assert wants_markdown(accept) is markdown


def test_a_candidate_that_never_served_says_so(shared_client: TestClient) -> None:
    body = shared_client.get(card_path("v0001", "anomaly_detection"), headers=MD).text
    assert "Never promoted" not in body  # the first version of a model is promoted
    history = card.alias_history(services(shared_client).store, "anomaly_detection", "v0001")
    assert [m["role"] for m in history] == ["became production"]


def test_hostile_values_are_escaped(make_client: ClientFactory) -> None:
    def tamper(settings: Settings) -> None:
        # a metadata key a newer writer adds, holding markup; the signature no longer holds
        path = settings.MODELS_DIR / MODEL / "v0002.json"
        meta = json.loads(path.read_text())
        meta["training_data"] = {"table": HOSTILE, "window": ["2026-01-01", "2026-06-30"],
                                 "rows": 1234, "content_sha256": "ab" * 32}
        path.write_text(json.dumps(meta))

    client = make_client(prepare=tamper)
    rolled = client.post(f"/ml/models/{MODEL}/rollback", json={"reason": HOSTILE})
    assert rolled.status_code == 200, rolled.text
    page = client.get(card_path("v0002")).text
    assert "<script>" not in page and "<img" not in page and "alert(1)>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&amp;amp;" in page  # escaped once more, not taken as an entity
    text = " ".join(parse(page).text)
    assert text.count(HOSTILE) == 2  # the training table and the rollback's reason
    assert "invalid: " in text and "2026-01-01 \u2026 2026-06-30" in text and "1,234" in text
    markdown = client.get(card_path("v0002"), headers=MD).text
    assert "<script>" not in markdown and "<img" not in markdown
    assert "\\| &amp;amp; |" in markdown  # the pipe cannot split a table row


def test_shadow_section_when_given(shared_client: TestClient) -> None:
    found = services(shared_client)
    shadow = {"candidate": "v0003", "compared": 400, "agreed": 390, "agreement": 0.975,
              "dropped": 2, "timeouts": 1}
    facts = card.card_facts(found.store, found.history, MODEL, "v0002", shadow=shadow)
    body = card.render_markdown(facts)
    assert "## Shadow scoring" in body and "- **Agreement**: 97.5%" in body
    assert "- **Rows compared**: 400" in body and "- **Timeouts**: 1" in body
    page = card_html.render_html({**facts, "shadow": {**shadow, "agreement": None}})
    assert 'id="shadow"' in page and "Agreement</dt><dd>\u2014" in page


@pytest.mark.parametrize(("path", "code", "words"), [
    (card_path("v0001", "no_such_model"), 404, "unknown model 'no_such_model'"),
    (card_path("v0099"), 404, "supplier_performance has no version v0099; versions are "
                              "v0001, v0002"),
    (card_path("v0001", "delay_prediction"), 404, "none (never trained)"),
    (card_path("latest"), 422, "'latest' is not a version id: it must look like v0001"),
    (card_path("v1.json"), 422, "must look like v0001"),
])
def test_unknown_or_malformed_is_refused(shared_client: TestClient, path: str, code: int,
                                         words: str) -> None:
    for headers in ({}, MD):
        found: dict[str, Any] = error(shared_client.get(path, headers=headers), code)
        assert words in found["message"], found
