"""The HTTP trust boundary, checked before any route runs: no writes from other sites, JSON
bodies only, bounded bodies.

`RequestGuard` is a pure ASGI middleware, so a body is never buffered to be checked. For a
mutating request (POST, PUT, PATCH, DELETE), with or without ML_API_KEY:

    403  it comes from another site: its `Origin` is not the request's own origin (the
         scheme and `Host` it was sent to) nor one of ALLOWED_ORIGINS, or its
         `Sec-Fetch-Site` is `cross-site` or `same-site` and its Origin is not allowed.
         Browsers send these headers with every cross-site form post and fetch; curl and
         scripts send neither and pass.
    415  it declares a content type other than JSON (`application/json`, `*/*+json`), or
         sends a body without declaring one. The content types an HTML form or a "simple"
         cross-site fetch can send without asking first (form-urlencoded, multipart,
         text/plain) are all refused.
    413  its body is larger than MAX_REQUEST_BYTES (any method): at once, reading nothing,
         when `Content-Length` says so; otherwise (chunked) as soon as the bytes read pass
         the limit, when reading stops and nothing is parsed.

A request with neither body nor content type (`curl -X POST .../trigger`) passes, and so
does the dashboard's own `fetch` (same origin, JSON). Deliberately not done: CORS. The
service sends no `Access-Control-Allow-*` header, so another site's scripts cannot read its
answers either; ALLOWED_ORIGINS only lets writes from those sites through this guard.

The limits are read from `app.state.settings` on each request (the lifespan sets them), so
a test or a second app can have its own; before the lifespan has run, the defaults apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.message import Message as MimeMessage
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app.errors import error_response
from backend.app.schemas import ERROR_DESCRIPTIONS
from backend.ml.config import Origin, Settings, parse_origin

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CROSS_SITE = frozenset({"cross-site", "same-site"})
DEFAULT_MAX_BYTES: int = Settings.model_fields["MAX_REQUEST_BYTES"].default
WRITE_ANSWERS = (403, 413, 415, 503)
CLOSE = {"Connection": "close"}  # the rest of an oversized body is not read


class BodyTooLarge(HTTPException):
    """The request body passed MAX_REQUEST_BYTES while being read (413).

    A Starlette HTTPException, so FastAPI's body reading lets it through to the error
    envelope instead of calling it a parsing error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes "
                              "(MAX_REQUEST_BYTES); nothing was read past that",
                         headers=CLOSE)


def is_json(content_type: str) -> bool:
    message = MimeMessage()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


def own_origin(scope: Scope, headers: Headers) -> Origin | None:
    """Where the request was sent: its scheme and Host (or the server's address)."""
    host = headers.get("host")
    if not host and scope.get("server"):
        server_host, port = scope["server"]
        host = f"[{server_host}]:{port}" if ":" in str(server_host) else f"{server_host}:{port}"
    return parse_origin(f"{scope.get('scheme', 'http')}://{host}") if host else None


def cross_site(scope: Scope, headers: Headers, allowed: frozenset[Origin]) -> str | None:
    """Why this request comes from a site not allowed to write (None: it does not)."""
    origin_header = headers.get("origin")
    origin = parse_origin(origin_header) if origin_header is not None else None
    if origin is not None and origin in allowed:
        return None
    if origin_header is not None and (origin is None or origin != own_origin(scope, headers)):
        return f"Origin {origin_header[:200]!r}"
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in CROSS_SITE:
        return f"Sec-Fetch-Site {fetch_site!r}"
    return None


def content_problem(headers: Headers) -> str | None:
    """Why the declared body is refused (None: JSON, or no body and no content type)."""
    content_type = headers.get("content-type", "").strip()
    if content_type:
        return None if is_json(content_type) else (
            f"Content-Type {content_type[:100]!r} is not accepted: send JSON "
            "(Content-Type: application/json), or no body at all")
    has_body = headers.get("content-length", "0").strip() not in ("", "0") or (
        "transfer-encoding" in headers)
    return ("a request body needs Content-Type: application/json" if has_body else None)


def declared_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else -1


class RequestGuard:
    """403 for writes from other sites, 415 for bodies that are not JSON, 413 for bodies
    over MAX_REQUEST_BYTES (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings | None = getattr(getattr(scope.get("app"), "state", None),
                                            "settings", None)
        limit = settings.MAX_REQUEST_BYTES if settings is not None else DEFAULT_MAX_BYTES
        allowed = settings.allowed_origins() if settings is not None else frozenset()
        headers = Headers(scope=scope)
        refusal = None
        if scope["method"] in MUTATING:
            why = cross_site(scope, headers, allowed)
            if why is not None:
                refusal = error_response(
                    403, f"cross-site request refused ({why}): this service accepts changes "
                         "only from its own pages and ALLOWED_ORIGINS")
            elif (problem := content_problem(headers)) is not None:
                refusal = error_response(415, problem)
        length = declared_length(headers)
        if refusal is None and length is not None and length < 0:
            refusal = error_response(400, "Content-Length is not a number of bytes",
                                     headers=CLOSE)
        elif refusal is None and length is not None and length > limit:
            refusal = error_response(413, f"the request body ({length} bytes) is larger than "
                                          f"{limit} bytes (MAX_REQUEST_BYTES)", headers=CLOSE)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._guarded(scope, receive, send, limit)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing
            if started:
                raise
            await error_response(413, str(exc.detail), headers=CLOSE)(scope, receive, send)


def document(app: FastAPI) -> None:
    """Add the answers every mutating operation may give to the OpenAPI document (the
    guard's 403, 413 and 415, and 503 for a disk that cannot be written), so the routes need
    not repeat them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                if method.upper() not in MUTATING:
                    continue
                for code in WRITE_ANSWERS:
                    operation.setdefault("responses", {}).setdefault(str(code), {
                        "description": ERROR_DESCRIPTIONS[code], "content": {
                            "application/json": {"schema": {
                                "$ref": "#/components/schemas/ErrorEnvelope"}}}})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
