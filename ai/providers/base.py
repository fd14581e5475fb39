"""The provider interface and what every adapter shares.

The gateway speaks OpenAI's chat-completions shape internally: an adapter maps that
request to its upstream's wire format, maps the upstream's response back to OpenAI
choices plus a normalized :class:`~ai.usage.Usage`, and maps each stream event to
OpenAI choice deltas. Errors keep the raw request (credentials redacted) and the raw
response, so the audit and logs can show what went over the wire.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp

from ai.config import ProviderConfig
from ai.usage import Usage

if TYPE_CHECKING:
    from botocore.credentials import Credentials as BotocoreCredentials

REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "x-amz-security-token"})
RAW_LIMIT = 64 * 1024

# "truncated": the upstream ended cleanly but before it said the answer was complete.
ErrorKind = Literal["connect", "status", "error_event", "timeout", "protocol", "truncated"]


@dataclass(frozen=True, slots=True)
class RawExchange:
    """One side of an upstream exchange, as sent or received (bounded, redacted)."""

    url: str = ""
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def of(
        cls,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        status: int | None = None,
    ) -> RawExchange:
        clean = {
            k: ("<redacted>" if k.lower() in REDACTED_HEADERS else v) for k, v in headers.items()
        }
        return cls(url, status, clean, body[:RAW_LIMIT])


class ProviderError(Exception):
    """An upstream failed: connect error, HTTP error status, error event, or deadline."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        request: RawExchange | None = None,
        response: RawExchange | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.request = request
        self.response = response
        self.retry_after = retry_after


class AwsCredentialSource(Protocol):
    """Where a SigV4-signing provider (Bedrock) gets AWS credentials when the provider
    config names no keys: the appliance passes its operational role's (refreshing)
    credentials; standalone, :class:`ai.providers.bedrock.DefaultCredentialChain`.
    Called off the event loop (it may block on STS or IMDS); it raises when there are
    none, with the reason."""

    def __call__(self) -> BotocoreCredentials: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """Resolved upstream secrets; never logged, never put into errors."""

    api_key: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws: AwsCredentialSource | None = None  # when the provider config names no AWS keys

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream request: the OpenAI-shaped body with ``model`` already the upstream's."""

    body: dict[str, Any]
    session: aiohttp.ClientSession
    config: ProviderConfig
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole response: OpenAI choices (index, message, finish_reason) and usage."""

    choices: list[dict[str, Any]]
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class ChoiceDelta:
    """One OpenAI stream delta of one choice; ``stop_sequence``: the client's stop
    sequence that ended the choice, when the upstream names it (Anthropic, Bedrock,
    vLLM; OpenAI never does)."""

    delta: dict[str, Any]
    finish_reason: str | None = None
    index: int = 0
    stop_sequence: str | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.delta.get("content") or self.delta.get("tool_calls"))


def tool_call_start(index: int, call_id: str, name: str) -> ChoiceDelta:
    """The OpenAI delta that opens tool call ``index`` (id, name, empty arguments)."""
    function = {"name": name, "arguments": ""}
    call = {"index": index, "id": call_id, "type": "function", "function": function}
    return ChoiceDelta({"tool_calls": [call]})


def tool_call_arguments(index: int, partial_json: str) -> ChoiceDelta:
    """The OpenAI delta that appends ``partial_json`` to tool call ``index``'s arguments."""
    return ChoiceDelta({"tool_calls": [{"index": index, "function": {"arguments": partial_json}}]})


StreamItem = ChoiceDelta | Usage


class Provider(Protocol):
    """One upstream wire protocol.

    ``stream`` yields the items mapped from one network read as one list, so the
    gateway forwards what arrived together with one write (never an empty list).
    """

    async def complete(self, call: UpstreamCall) -> Completion: ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[list[StreamItem]]: ...

    async def embed(self, call: UpstreamCall) -> dict[str, Any]: ...


def _timeout(config: ProviderConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=config.request_timeout_s, sock_connect=config.connect_timeout_s
    )


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Retry-After")
    return int(value) if value and value.isdigit() else None


async def open_post(
    call: UpstreamCall, url: str, headers: dict[str, str], body: bytes
) -> aiohttp.ClientResponse:
    """POST and return a 2xx response (caller releases it); anything else -> ProviderError."""
    raw = RawExchange.of(url, headers, body)
    try:
        # aiohttp sends a large bytes body in one write that may block the loop (and
        # warns); a stream of it goes out in pieces.
        data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > RAW_LIMIT else body
        resp = await call.session.post(
            url, data=data, headers=headers, timeout=_timeout(call.config)
        )
    except TimeoutError:
        raise ProviderError("timeout", f"upstream {url} timed out", request=raw) from None
    except aiohttp.ClientError as exc:
        raise ProviderError(
            "connect", f"cannot reach upstream {url}: {type(exc).__name__}", request=raw
        ) from None
    if resp.status >= 400:
        try:
            data = await resp.read()
        finally:
            resp.release()
        raise ProviderError(
            "status",
            f"upstream returned HTTP {resp.status}",
            status=resp.status,
            request=raw,
            response=RawExchange.of(url, resp.headers, data, resp.status),
            retry_after=_retry_after(resp.headers),
        )
    return resp


async def post_json(
    call: UpstreamCall, url: str, headers: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    return await post_body(call, url, {**headers, "Content-Type": "application/json"}, body)


async def post_body(
    call: UpstreamCall, url: str, headers: dict[str, str], body: bytes
) -> dict[str, Any]:
    """POST an encoded body, return the JSON object answer."""
    resp = await open_post(call, url, headers, body)
    try:
        data = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderError("connect", f"upstream read failed: {type(exc).__name__}") from None
    finally:
        resp.release()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ProviderError(
            "protocol",
            "upstream sent a body that is not a JSON object",
            request=RawExchange.of(url, headers, body),
            response=RawExchange.of(url, resp.headers, data, resp.status),
        )
    return parsed


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


def _sse_event(block: bytes) -> SSEEvent | None:
    """One event from the lines of one blank-line-terminated block (None: no data)."""
    event, data = "", list[str]()
    for line in block.decode().split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    return SSEEvent(event or "message", "\n".join(data)) if data else None


async def iter_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[list[SSEEvent]]:
    """Server-sent events of a response (WHATWG event-stream parsing, enough of it), one
    list per network read: what arrived together is forwarded with one write."""
    buffer = b""
    try:
        async for chunk in resp.content.iter_any():
            buffer += chunk
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            if b"\n\n" not in buffer:
                continue
            *blocks, buffer = buffer.split(b"\n\n")
            events = [e for e in map(_sse_event, blocks) if e is not None]
            if events:
                yield events
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderError("connect", f"upstream stream broke: {type(exc).__name__}") from None
    last = _sse_event(buffer.rstrip(b"\r\n"))
    if last is not None:
        yield [last]


def error_from_event(payload: str, url: str) -> ProviderError:
    """An error event inside a 200 stream."""
    return ProviderError(
        "error_event",
        "upstream stream carried an error event",
        response=RawExchange.of(url, {}, payload.encode(), 200),
    )
