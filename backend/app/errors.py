"""Every error leaves the API in one envelope: `{"status": "error", "error": {code, message}}`.

Domain errors of the ML core become HTTP errors here, in one table, so routes can let them
rise:

    specs.UnknownModelError         404, lists the valid names (a path parameter; query
                                    parameters are checked in deps and answer 422)
    store.UnknownVersionError       404
    store.StoreError (the rest)     409: refused in the current state (nothing to roll back
                                    to, nothing promoted yet, a checksum mismatch, busy)
    runner.RunInProgressError       409, with the running run's id in `error.run_id`
    RequestValidationError          422, naming each bad field (`error.details` lists them)
    OSError of a full, read-only    503, one line naming the path (`storage_failure`), also
    or forbidden disk (ENOSPC,      when it is the cause of a StoreError or of any other
    EDQUOT, EROFS, EACCES, EPERM)   exception; logged as one line, without a traceback
    any other exception             500 with a reference; the traceback goes to the log only

The catch-all is an ASGI middleware rather than an `Exception` handler: Starlette re-raises
after such a handler has answered, which would log every failure twice under uvicorn.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.ml.fleet.specs import UnknownModelError
from backend.ml.fsio import refused_write
from backend.ml.registry.store import StoreError, UnknownVersionError
from backend.ml.runs.progress import RunInProgressError

logger = logging.getLogger("backend.app")
MAX_REPORTED = 10


def error_response(code: int, message: str, *, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"code": code, "message": message, **{k: v for k, v in extra.items()
                                                  if v is not None}}
    return JSONResponse({"status": "error", "error": body}, status_code=code, headers=headers)


def validation_error(field: Sequence[str | int], message: str) -> RequestValidationError:
    """A 422 for a value the route checks itself (e.g. a model name in a query)."""
    return RequestValidationError([{"loc": tuple(field), "msg": message, "type": "value_error"}])


def field_name(loc: Sequence[Any]) -> str:
    """("body", "records", 3, "x") -> "body.records[3].x"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: dict[str, Any]) -> tuple[str, str]:
    """(field, message) of one pydantic error, in words a client can act on."""
    loc = list(error.get("loc", ()))
    kind, message = error.get("type", ""), str(error.get("msg", "invalid"))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "cannot be parsed")
        return "body", f"the request body is not valid JSON ({reason})"
    if kind == "missing" and loc == ["body"]:
        return "body", "a JSON request body is required"
    if (kind == "model_attributes_type" and loc == ["body"]) or kind == "dict_type":
        return field_name(loc), "must be a JSON object"
    if kind == "extra_forbidden":
        return field_name(loc), "is not a known field"
    message = message.removeprefix("Value error, ")
    return field_name(loc), message


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's answer to a body that is not UTF-8: malformed JSON like any other
        return error_response(422, "body: the request body is not valid JSON (not UTF-8 "
                                   "text)")
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    return error_response(exc.status_code, detail, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = [describe(e) for e in exc.errors()]
    shown = [f"{field}: {message}" for field, message in found[:MAX_REPORTED]]
    more = len(found) - len(shown)
    message = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    details = [{"field": field, "message": msg} for field, msg in found[:100]]
    return error_response(422, message or "invalid request", details=details)


async def _unknown_model(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, str(exc))


def storage_failure(exc: BaseException) -> OSError | None:
    """The OSError of a full, read-only or forbidden disk that `exc` is or was caused by:
    the operator must act, the client can retry (`fsio.refused_write`, as the CLI)."""
    return refused_write(exc)


def storage_response(exc: BaseException, cause: OSError) -> JSONResponse:
    """503 naming the path and the reason in one line (logged as one line too)."""
    if isinstance(exc, OSError):  # the OSError itself, or a wrapper of ours with the path
        detail = (f"{exc.filename}: {exc.strerror}" if exc.filename
                  else exc.strerror or str(exc))
    else:
        detail = str(exc)
    if cause.filename and str(cause.filename) not in detail:
        detail += f" ({cause.filename})"
    code = errno.errorcode.get(cause.errno or 0, "OSError")
    message = " ".join(f"storage unavailable ({code}): {detail}".split())[:1000]
    logger.error("%s", message)
    return error_response(503, message)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    cause = storage_failure(exc)
    if cause is not None:
        return storage_response(exc, cause)
    return error_response(404 if isinstance(exc, UnknownVersionError) else 409, str(exc))


async def _run_in_progress(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunInProgressError)
    return error_response(409, str(exc), run_id=exc.run_id)


class CatchAll:
    """Answer an unhandled exception with a short 500 envelope; log the traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            cause = storage_failure(exc)
            if cause is not None and not started:
                await storage_response(exc, cause)(scope, receive, send)
                return
            ref = uuid4().hex[:12]
            logger.exception("unhandled error in %s %s (ref %s)", scope.get("method"),
                             scope.get("path"), ref)
            if started:  # too late for another answer; the server closes the connection
                raise
            response = error_response(500, f"internal server error (ref {ref}); the details "
                                           "are in the server log")
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(UnknownModelError, _unknown_model)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RunInProgressError, _run_in_progress)
    app.add_middleware(CatchAll)
