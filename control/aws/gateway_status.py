"""Where an operator's tool reads what a gateway's agent reports about itself.

A live resize (:mod:`control.aws.resize`) must know that a new instance joined its AZ as
a healthy standby whose conntrack sync caught up, and that it leads after a hand-over.
Only the agent knows: its state (``aws``: role, lease, takeover; ``conntrack_sync``:
the daemon and its caches) is what ``/v1/status`` of the config API serves and what
``spectra status`` reads from the state files. :class:`GatewayStatus` is that read, by
instance id; :class:`ApiStatus` asks each instance's config API (on EC2: one agent per
instance, at the inside ENI's private address), :class:`LocalStatus` reads the state
files of the agents on this host (several instances on one host: the VPC lab).

With ``tls.appliance`` on, the config API's plain port resets connections from anything
but loopback and HAProxy serves it over HTTPS on the appliance's port: :class:`ApiStatus`
then speaks HTTPS (:class:`HttpsTrust`), with the certificate always verified -- against
a CA bundle, the document's own certificate, or the system trust store -- and the name
checked. A certificate that fails verification is not a gateway still booting: it raises
:class:`StatusUntrusted` at once, naming the address, the trust used and how to fix it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from control.agent import RUN_ROOT


class StatusUntrusted(Exception):
    """The gateway's HTTPS certificate failed verification (not a transient failure)."""


@dataclass(frozen=True, slots=True)
class HttpsTrust:
    """How :class:`ApiStatus` verifies the appliance's certificate: ``context`` (from
    :func:`https_trust`), ``source`` saying which trust it holds (for errors),
    ``server_name`` the name checked (and sent as SNI) instead of the address asked."""

    context: ssl.SSLContext
    source: str
    server_name: str | None = None


def https_trust(cafile: str | None, source: str, server_name: str | None = None) -> HttpsTrust:
    """A verifying client context: ``cafile`` (PEM: a CA bundle, or the appliance's own
    certificate and chain, any of which may be the anchor) or, with ``None``, the system
    trust store. Raises ``ValueError`` naming ``source`` when the file gives no certificate."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{source}: no PEM certificate could be read ({exc})") from exc
    if cafile is not None:  # the appliance's leaf or an intermediate may be the anchor
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return HttpsTrust(context, source, server_name)


class _HttpsTo(http.client.HTTPSConnection):
    """HTTPS to ``host`` with the certificate checked for ``server_name``."""

    def __init__(self, host: str, port: int, trust: HttpsTrust, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=trust.context)
        self._trust = trust

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        name = self._trust.server_name or self.host
        try:
            self.sock = self._trust.context.wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise


class GatewayStatus(Protocol):
    """The state an instance's agent reports, or ``None`` when it does not answer."""

    def state(self, instance_id: str) -> dict[str, Any] | None: ...


def _match(instances: Any, instance_id: str) -> dict[str, Any] | None:
    """The entry of ``instances`` (name -> agent state) whose AWS side is ``instance_id``."""
    if not isinstance(instances, dict):
        return None
    for state in instances.values():
        if isinstance(state, dict) and (state.get("aws") or {}).get("instance_id") == instance_id:
            return state
    return None


class LocalStatus:
    """The agents' state files on this host (``/run/spectra/<instance>/status.json``)."""

    def __init__(self, root: Path = RUN_ROOT) -> None:
        self.root = root

    def state(self, instance_id: str) -> dict[str, Any] | None:
        states: dict[str, Any] = {}
        for path in sorted(self.root.glob("*/status.json")):
            try:
                states[path.parent.name] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being rewritten: the next poll reads it
        return _match(states, instance_id)


class ApiStatus:
    """``GET /v1/status`` of the instance's own config API. ``address(instance_id)``
    gives the host to ask (its inside ENI's private address); ``token`` is an API token
    with the viewer role or more; ``https`` (``tls.appliance`` on): ask over HTTPS on
    ``port``, the appliance's HTTPS port. ``last_error`` is why the last ask got nothing."""

    def __init__(
        self,
        address: Callable[[str], str | None],
        token: str | None,
        *,
        port: int = 8080,
        timeout_s: float = 3.0,
        https: HttpsTrust | None = None,
    ) -> None:
        self._address = address
        self._token = token
        self.port = port
        self.timeout_s = timeout_s
        self.https = https
        self.last_error: str | None = None

    def state(self, instance_id: str) -> dict[str, Any] | None:
        host = self._address(instance_id)
        if host is None:
            self.last_error = "no address yet"
            return None
        data = self.status(host)
        return _match(data.get("instances") if isinstance(data, dict) else None, instance_id)

    def status(self, host: str) -> Any:
        """The ``/v1/status`` answer of the config API at ``host``, or ``None`` (why:
        ``last_error``); raises :class:`StatusUntrusted` when the certificate fails."""
        if self.https is None:
            conn: http.client.HTTPConnection = http.client.HTTPConnection(
                host, self.port, timeout=self.timeout_s
            )
        else:
            conn = _HttpsTo(host, self.port, self.https, self.timeout_s)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        where = f"{'https' if self.https else 'http'}://{host}:{self.port}/v1/status"
        try:
            conn.request("GET", "/v1/status", headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                self.last_error = f"{where} answered {answer.status}"
                return None
            self.last_error = None
            return json.loads(body)
        except ssl.SSLCertVerificationError as exc:  # only raised with https set
            trust = self.https or HttpsTrust(ssl.create_default_context(), "the default")
            name = trust.server_name or host
            raise StatusUntrusted(
                f"{where}: the certificate does not verify for {name!r} against "
                f"{trust.source} ({exc.verify_message}): give the CA that signed "
                "tls.appliance's certificate (--ca-bundle) and a name the certificate "
                "holds (--tls-server-name)"
            ) from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.last_error = f"{where}: {exc}"
            return None  # not up yet, or restarting: the caller polls
        finally:
            conn.close()
