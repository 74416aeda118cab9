"""The API's one error body, ``{"error": {"status", "code", "message", "field"}}``, and
the handlers that map our typed errors onto it. A client error is never a 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.domain import (
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    OrchestratorError,
    PersistenceError,
)
from otel import logs
from otel.vocabulary import OperationEvent

__all__ = ["ApiRefusal", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


def error_response(
    status_code: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    # A message may quote what the client sent, lone surrogates included ("\ud800" in a
    # JSON key): escaped, or encoding the body would fail and turn a 4xx into a 500.
    body = {"error": {"status": status_code, "code": code, "message": _encodable(message),
                      "field": None if field is None else _encodable(field)}}
    extra = dict(headers or {})
    if status_code == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(body, status_code=status_code, headers=extra or None)


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class ApiRefusal(Exception):
    """A request refused before it reaches a use case (queue full, rate limited)."""

    def __init__(
        self, status_code: int, code: str, message: str, *, retry_after: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code, self.code, self.message, self.field = status_code, code, message, field
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return error_response(self.status_code, self.code, self.message, self.field, headers)


def install_error_handlers(api: FastAPI) -> None:
    Handler = Callable[[Request, Any], Awaitable[JSONResponse]]

    def on(exc_type: type[Exception]) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            api.add_exception_handler(exc_type, fn)
            return fn

        return register

    @on(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            # The location is a character position, not a field: the body is what is wrong.
            detail = (first.get("ctx") or {}).get("error") or first.get("msg")
            at = f" at character {where[1]}" if len(where) > 1 else ""
            return error_response(422, "validation_error", f"request body is not valid JSON: {detail}{at}", "body")
        loc = [str(p) for p in where if p not in ("body", "query", "path", "header")]
        # Nothing below the body itself: the body is missing or not an object.
        field = ".".join(loc) or ("body" if where[:1] == ("body",) else None)
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(422, "validation_error", message, field)

    @on(InvalidRequest)
    async def invalid_request(_: Request, exc: InvalidRequest) -> JSONResponse:
        return error_response(422, "validation_error", exc.message, exc.field)

    @on(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, "not_found", exc.message)

    @on(IllegalTransition)
    async def conflict(_: Request, exc: IllegalTransition) -> JSONResponse:
        return error_response(409, "illegal_transition", exc.message)

    @on(PersistenceError)
    async def unavailable(_: Request, exc: PersistenceError) -> JSONResponse:
        return error_response(503, "store_unavailable", "the job store is unavailable; retry later")

    @on(OrchestratorError)
    async def other(_: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(500, str(exc.category), exc.message)

    @on(ApiRefusal)
    async def refused(_: Request, exc: ApiRefusal) -> JSONResponse:
        return exc.response()

    @on(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body" (a body that is not UTF-8, say): malformed
            # JSON like any other, so the documented 422 rather than an undocumented 400.
            return error_response(
                422, "validation_error", f"request body is not valid JSON: {exc.__cause__}", "body"
            )
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # Brackets nested deeper than the parser recurses, well within the body limit.
            return error_response(422, "validation_error", "request body is not valid JSON: nested too deeply", "body")
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @on(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        logs.event(
            log,
            logging.ERROR,
            OperationEvent.ERROR,
            f"unhandled API error: {exc}",
            exc_info=exc,
            operation="api",
            error_category="internal",
        )
        return error_response(500, "internal", "internal error")
