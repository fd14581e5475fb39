"""Amazon Bedrock Converse / ConverseStream, signed with SigV4 (botocore's signer).

References: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and ..._ConverseStream.html; the stream is AWS event-stream framing
(:mod:`ai.providers.eventstream`). ``base_url`` is the endpoint override
(``https://bedrock-runtime.<region>.amazonaws.com`` in production). Usage maps
Bedrock's camelCase fields, cache reads/writes included. A stream is complete only when
``messageStop`` names a stop reason and the stream's last event, ``metadata`` (usage and
metrics), follows it with no partial frame left: anything short of that is cut off.

Credentials, in this order: the keys the provider config names (``aws_access_key_id``
...), else the :class:`~ai.providers.base.AwsCredentialSource` the gateway was given --
the appliance passes its operational role's credentials (``control.aws``), standalone
``python -m ai`` uses :class:`DefaultCredentialChain` (botocore's default chain:
environment, shared files, container or instance role), resolved once and refreshed by
botocore.  Resolving may block (STS, IMDS), so it runs on a worker thread; the SigV4
signature itself is pure computation and stays on the event loop.  A
:class:`~ai.providers.credentials.RefreshingCredentials` source (the agent's, with
``--aws``) hands over held keys without a thread hop and refreshes them in the
background before they expire.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as AWSCredentials
from botocore.credentials import ReadOnlyCredentials

from ai.providers.anthropic import _text
from ai.providers.base import (
    AwsCredentialSource,
    ChoiceDelta,
    Completion,
    ProviderError,
    RawExchange,
    StreamItem,
    UpstreamCall,
    open_post,
    post_body,
    tool_call_arguments,
    tool_call_start,
)
from ai.providers.credentials import CredentialsUnavailable, RefreshingCredentials
from ai.providers.eventstream import Decoder, EventStreamError
from ai.usage import Usage

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "model_context_window_exceeded": "length",  # cut by the context window, not done
}

# Claude's own response fields naming the stop sequence that matched, as JSON pointers
# for ``additionalModelResponseFieldPaths`` (Bedrock returns what they point at; one
# that points at nothing returns nothing).
STOP_SEQUENCE_PATHS = ("/delta/stop_sequence", "/stop_sequence")

# --- request mapping -------------------------------------------------------------------


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message["role"] == "tool":
        return [
            {
                "toolResult": {
                    "toolUseId": message.get("tool_call_id", ""),
                    "content": [{"text": _text(message.get("content"))}],
                }
            }
        ]
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {}
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": args,
                }
            }
        )
    return blocks


def map_request(body: dict[str, Any]) -> dict[str, Any]:
    system = [
        {"text": _text(m.get("content"))}
        for m in body["messages"]
        if m["role"] in ("system", "developer")
    ]
    messages: list[dict[str, Any]] = []
    for m in body["messages"]:
        if m["role"] in ("system", "developer"):
            continue
        role = "assistant" if m["role"] == "assistant" else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(_content(m))
        else:
            messages.append({"role": role, "content": _content(m)})
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        inference["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    if body.get("stop"):
        inference["stopSequences"] = (
            [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
        )
        if "anthropic." in str(body.get("model")):  # Claude names the one that matched
            out["additionalModelResponseFieldPaths"] = list(STOP_SEQUENCE_PATHS)
    if inference:
        out["inferenceConfig"] = inference
    if body.get("tools"):
        config: dict[str, Any] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": t["function"]["name"],
                        "description": t["function"].get("description") or t["function"]["name"],
                        "inputSchema": {
                            "json": t["function"].get("parameters") or {"type": "object"}
                        },
                    }
                }
                for t in body["tools"]
            ]
        }
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            config["toolChoice"] = {"tool": {"name": choice.get("function", {}).get("name")}}
        elif choice == "required":
            config["toolChoice"] = {"any": {}}
        elif choice == "auto":
            config["toolChoice"] = {"auto": {}}
        out["toolConfig"] = config
    return out


class DefaultCredentialChain:
    """botocore's default credential chain, resolved on first use and kept (standalone
    gateway; the appliance passes its operational role instead)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: AWSCredentials | None = None

    def __call__(self) -> AWSCredentials:
        with self._lock:
            if self._found is None:
                import botocore.session

                self._found = botocore.session.get_session().get_credentials()
            if self._found is None:
                raise LookupError("botocore's default chain found no AWS credentials")
            return self._found


def _frozen(source: AwsCredentialSource) -> ReadOnlyCredentials:
    found: ReadOnlyCredentials = source().get_frozen_credentials()
    return found


async def _aws_credentials(call: UpstreamCall) -> AWSCredentials:
    creds = call.credentials
    if creds.aws_access_key_id and creds.aws_secret_access_key:
        return AWSCredentials(
            creds.aws_access_key_id, creds.aws_secret_access_key, creds.aws_session_token
        )
    if creds.aws is None:
        raise ProviderError("connect", "no AWS credentials for the bedrock provider")
    if isinstance(creds.aws, RefreshingCredentials):  # held keys: no thread hop per request
        try:
            return await creds.aws.current()
        except CredentialsUnavailable as exc:
            raise ProviderError(
                "connect", f"no AWS credentials for the bedrock provider: {exc}"
            ) from None
    try:
        frozen = await asyncio.to_thread(_frozen, creds.aws)
    except Exception as exc:  # the source says why (an inert operational role, ...)
        raise ProviderError(
            "connect", f"no AWS credentials for the bedrock provider: {exc}"
        ) from None
    if not frozen.access_key or not frozen.secret_key:
        raise ProviderError("connect", "incomplete AWS credentials for the bedrock provider")
    return AWSCredentials(frozen.access_key, frozen.secret_key, frozen.token)


async def _signed_headers(call: UpstreamCall, url: str, body: bytes, accept: str) -> dict[str, str]:
    aws = await _aws_credentials(call)
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "Accept": accept},
    )
    SigV4Auth(aws, "bedrock", call.config.region or "us-east-1").add_auth(request)
    return {str(k): str(v) for k, v in request.headers.items()}


def _url(call: UpstreamCall, action: str) -> str:
    model = quote(str(call.body["model"]), safe="")
    return f"{call.config.base_url.rstrip('/')}/model/{model}/{action}"


# --- response mapping ------------------------------------------------------------------


def map_usage(raw: dict[str, Any]) -> Usage:
    read = int(raw.get("cacheReadInputTokens") or 0)
    write = int(raw.get("cacheWriteInputTokens") or 0)
    return Usage(
        prompt_tokens=int(raw.get("inputTokens") or 0) + read + write,
        completion_tokens=int(raw.get("outputTokens") or 0),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def map_response(data: dict[str, Any]) -> Completion:
    content = ((data.get("output") or {}).get("message") or {}).get("content")
    if not isinstance(content, list):
        raise ProviderError("protocol", "upstream response has no output message")
    text = "".join(b["text"] for b in content if "text" in b)
    calls = [
        {
            "id": b["toolUse"]["toolUseId"],
            "type": "function",
            "function": {
                "name": b["toolUse"]["name"],
                "arguments": json.dumps(b["toolUse"].get("input", {})),
            },
        }
        for b in content
        if "toolUse" in b
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    usage = data.get("usage")
    reason = data.get("stopReason")
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        # a cut-off answer: never invented
        "finish_reason": STOP_REASONS.get(reason, "stop") if reason else None,
    }
    if (matched := _matched(data)) is not None:
        choice["stop_sequence"] = matched
    return Completion([choice], map_usage(usage) if isinstance(usage, dict) else None)


def _matched(data: dict[str, Any]) -> str | None:
    """The stop sequence Claude names in ``additionalModelResponseFields`` (asked for by
    :data:`STOP_SEQUENCE_PATHS`: Bedrock answers ``{"delta": {"stop_sequence"}}``; a
    top-level ``stop_sequence`` is read too) when ``stopReason`` is ``stop_sequence``."""
    if data.get("stopReason") != "stop_sequence":
        return None
    extra = data.get("additionalModelResponseFields") or {}
    found = extra.get("stop_sequence", (extra.get("delta") or {}).get("stop_sequence"))
    return found if isinstance(found, str) else None


# --- stream-chunk mapping --------------------------------------------------------------


class _StreamState:
    def __init__(self) -> None:
        self.tool_index: dict[int, int] = {}
        self.stopped = False  # messageStop came
        self.ended = False  # metadata after messageStop: the stream's last event came

    def map(self, event: str, data: dict[str, Any]) -> list[StreamItem]:
        if event == "messageStart":
            return [ChoiceDelta({"role": "assistant", "content": ""})]
        if event == "contentBlockStart":
            tool = (data.get("start") or {}).get("toolUse")
            if not tool:
                return []
            index = self.tool_index[data.get("contentBlockIndex", 0)] = len(self.tool_index)
            return [tool_call_start(index, tool.get("toolUseId", ""), tool.get("name", ""))]
        if event == "contentBlockDelta":
            delta = data.get("delta") or {}
            if "text" in delta:
                return [ChoiceDelta({"content": delta["text"]})]
            if "toolUse" in delta:
                index = self.tool_index.get(data.get("contentBlockIndex", 0), 0)
                return [tool_call_arguments(index, delta["toolUse"].get("input", ""))]
            return []
        if event == "messageStop":
            self.stopped = True
            reason = data.get("stopReason")  # None: the answer is not done, never invented
            finish = STOP_REASONS.get(reason, "stop") if reason else None
            return [ChoiceDelta({}, finish, stop_sequence=_matched(data))]
        if event == "metadata":
            self.ended = self.stopped
            usage = data.get("usage")
            return [map_usage(usage)] if isinstance(usage, dict) else []
        return []


class BedrockProvider:
    """Bedrock Runtime Converse API."""

    async def complete(self, call: UpstreamCall) -> Completion:
        url = _url(call, "converse")
        body = json.dumps(map_request(call.body)).encode()
        headers = await _signed_headers(call, url, body, "application/json")
        return map_response(await post_body(call, url, headers, body))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[list[StreamItem]]:
        url = _url(call, "converse-stream")
        body = json.dumps(map_request(call.body)).encode()
        headers = await _signed_headers(call, url, body, "application/vnd.amazon.eventstream")
        resp = await open_post(call, url, headers, body)
        decoder, state = Decoder(), _StreamState()
        try:
            async for chunk in resp.content.iter_any():
                items: list[StreamItem] = []
                error: ProviderError | None = None
                for message in decoder.feed(chunk):
                    kind = message.headers.get(":message-type", "event")
                    if kind != "event":
                        error = ProviderError(
                            "error_event",
                            "upstream stream carried "
                            f"{message.headers.get(':exception-type', 'an error')}",
                            response=RawExchange.of(url, message.headers, message.payload, 200),
                        )
                        break
                    data = json.loads(message.payload or b"{}")
                    items += state.map(message.headers.get(":event-type", ""), data)
                if items:  # what came before an error is forwarded first
                    yield items
                if error is not None:
                    raise error
        except EventStreamError as exc:
            raise ProviderError("protocol", f"bad event-stream from upstream: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError("connect", f"upstream stream broke: {type(exc).__name__}") from None
        finally:
            resp.release()
        if not state.ended or decoder.pending:
            missing = "metadata" if state.stopped else "messageStop"
            raise ProviderError("truncated", f"upstream stream {url} ended before {missing}")

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        raise ProviderError("protocol", "embeddings are not mapped for Bedrock")
