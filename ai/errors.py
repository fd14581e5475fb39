"""Gateway errors and their OpenAI-shaped HTTP rendering.

Domain code raises :class:`GatewayError` subclasses; only the HTTP handlers turn them
into responses (``{"error": {"message", "type", "param", "code"}}``, OpenAI's shape).
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """An error that the client sees, with its HTTP status and OpenAI error type."""

    status = 500
    type = "api_error"
    code: str | None = None
    retryable = True  # False: answered with ``x-should-retry: false`` (no SDK retries it)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After`` when the client may retry after a while; ``x-should-retry:
        false`` (read by the openai and anthropic SDKs, which otherwise retry every 429)
        when retrying cannot help."""
        out = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
        if not self.retryable:
            out["x-should-retry"] = "false"
        return out

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(GatewayError):
    """The request body is malformed or names something not accepted."""

    status = 400
    type = "invalid_request_error"


class Unauthenticated(GatewayError):
    """No API key, or one the gateway does not know."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    """The API key is known but revoked."""

    status = 403
    type = "permission_error"
    code = "key_revoked"


class ModelNotFound(GatewayError):
    """No route matches the requested model."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    """The request body exceeds the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    """A per-key rate limit (requests or tokens per minute) is exhausted."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExhausted(GatewayError):
    """A per-key budget (tokens or cost) is exhausted."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    retryable = False  # a lifetime budget does not refill: no Retry-After to give


class BudgetHeld(BudgetExhausted):
    """A per-key budget is not spent, but what is left is reserved by requests in flight
    (each holds its worst case until it settles): retry when they finish."""

    type = "rate_limit_error"
    code = "budget_held_in_flight"
    retryable = True


class UpstreamFailed(GatewayError):
    """The upstream provider failed; the message never carries credentials."""

    status = 502
    type = "api_error"
    code = "upstream_error"


class Overloaded(GatewayError):
    """A route with an overflow policy cannot serve now (`queue` timed out, `reject`,
    or an embeddings request, which never queues or spills)."""

    status = 503
    type = "api_error"
    code = "overloaded"
