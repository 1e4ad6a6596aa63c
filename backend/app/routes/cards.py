"""A stored version's model card: `GET /ml/models/{name}/versions/{version}/card`.

HTML by default (a page with no script and nothing fetched, under its own strict
Content-Security-Policy), Markdown when the Accept header prefers `text/markdown`. The facts
and both renderings are in `backend.ml.registry.card`; this module only picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from backend.app.deps import ServicesDep, ShadowDep, SpecDep
from backend.app.errors import validation_error
from backend.app.schemas import error_responses
from backend.app.shadow import ShadowScorer
from backend.ml.registry import card, card_html
from backend.ml.registry.aliases import VERSION_RE
from backend.ml.registry.store import UnknownVersionError
from backend.ml.runs.services import Services

router = APIRouter(prefix="/ml/models", tags=["models"])
MARKDOWN = "text/markdown"
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}
CARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The card: an HTML page, or Markdown when asked for with "
                         "`Accept: text/markdown`.",
          "content": {"text/html": {"schema": {"type": "string"}},
                      MARKDOWN: {"schema": {"type": "string"}}}},
    **error_responses(404, 422)}


def quality(accept: str, wanted: str) -> float:
    """The q-value the Accept header gives `wanted` (its most specific matching range)."""
    best, best_rank = 0.0, -1
    kind = wanted.split("/")[0]
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        rank = {wanted: 2, f"{kind}/*": 1, "*/*": 0}.get(media.lower(), -1)
        if rank <= best_rank:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, best_rank = q, rank
    return best


def wants_markdown(accept: str | None) -> bool:
    """Markdown only when asked for above HTML; a missing header, `*/*` or a tie gets HTML."""
    if not accept:
        return False
    return quality(accept, MARKDOWN) > quality(accept, "text/html")


def shadow_summary(shadow: ShadowScorer | None, services: Services, name: str,
                   version: str) -> Mapping[str, Any] | None:
    """Shadow scoring's agreement (this process's counts) on the card of the candidate it
    scores and of the production version it is compared with; None otherwise or when off."""
    summary = None if shadow is None else shadow.summary(name)
    if summary is None or summary.get("candidate") is None:
        return None
    if version in (summary["candidate"], services.store.aliases(name)["production"]):
        return summary
    return None


@router.get("/{name}/versions/{version}/card", response_class=Response,
            responses=CARD_RESPONSES)
def model_card(spec: SpecDep, services: ServicesDep, shadow: ShadowDep, request: Request,
               version: Annotated[str, Path(
                   description="A version id such as v0001 (GET /ml/models/{name}/versions).",
                   max_length=20, json_schema_extra={"pattern": VERSION_RE.pattern})]
               ) -> Response:
    """A version's model card: purpose, data window and fingerprint, metric against its
    baseline and threshold, the promotion gate's interval and decision, slices, features
    with their training reference statistics, parameters, library versions and who
    promoted or rolled it back, when and why. Any stored version (candidates too)."""
    if not VERSION_RE.match(version):
        raise validation_error(("path", "version"), f"{version[:20]!r} is not a version id: "
                               "it must look like v0001")
    committed = services.store.committed(spec.name)
    if version not in committed:  # named from the listing; no path in the answer
        raise UnknownVersionError(f"{spec.name} has no version {version}; versions are "
                                  f"{', '.join(committed) or 'none (never trained)'}")
    facts = card.card_facts(services.store, services.history, spec.name, version,
                            shadow=shadow_summary(shadow, services, spec.name, version))
    if wants_markdown(request.headers.get("accept")):
        return Response(card.render_markdown(facts), media_type=MARKDOWN,
                        headers=HEADERS | {"Vary": "Accept"})
    return HTMLResponse(card_html.render_html(facts), headers=HEADERS | {
        "Vary": "Accept", "Content-Security-Policy": card_html.CSP})
