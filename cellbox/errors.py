"""The one error shape of the Cell API: ``{"error": sentence, "error_type": slug}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("cellbox")


class ApiError(Exception):
    def __init__(self, status: int, error: str, error_type: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.error_type = error_type


def bad_request(error: str) -> ApiError:
    return ApiError(400, error, "invalid_request")


def error_response(status: int, error: str, error_type: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_type": error_type}, status_code=status)


_PLACES = {"query": "query parameter ", "path": "path parameter ", "header": "header ", "body": ""}


def _describe(errors: list[dict]) -> str:
    """Name each offending field, and where it goes: a query parameter, the body..."""
    parts = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        place, *field = [str(p) for p in err.get("loc", ())] or ["body"]
        name = ".".join(field)
        if err.get("type") == "missing" and place == "body" and not field:
            parts.append("a JSON body is required")
            continue
        parts.append(f"{_PLACES.get(place, '')}{name or 'body'}: {err.get('msg', 'is invalid')}")
    return "; ".join(parts)


_STATUS_TYPES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.error_type)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {_describe(exc.errors())}", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _STATUS_TYPES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the Cell API"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
            detail = f"{request.method} is not allowed here" + (f"; use {allowed}" if allowed else "")
        return error_response(exc.status_code, detail, error_type)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        # The exception's text can name host paths: it goes to the log, not to the caller.
        return error_response(
            500, f"internal error ({type(exc).__name__}); the server's log has the details", "internal_error"
        )
