"""IMDSv2 client: who and where this instance is, and its network interfaces.

Implements "Use the Instance Metadata Service to access instance metadata" / "Use
IMDSv2" of the Amazon EC2 user guide: a session token from ``PUT /latest/api/token``
(``X-aws-ec2-metadata-token-ttl-seconds``, 1..21600) sent as
``X-aws-ec2-metadata-token`` on every ``GET``; IMDSv1 (no token) is never used.  The
token is reused until shortly before its TTL ends and fetched again after a 401.

The token PUT's response carries the instance's hop limit (``HttpPutResponseHopLimit``)
as its IP TTL: from a container one hop further than that limit the PUT never answers,
so a timed-out PUT is reported with that hint.  Connection errors, timeouts and 5xx
answers are retried ``attempts`` times with a growing pause, then :class:`ImdsError`
names the endpoint, the path and the last error.  Requests never go through an HTTP
proxy (``http_proxy`` in the environment is ignored).

This is the boot-time view of the instance (ids, AZ, region, account, interfaces with
their MACs and private IPs); the lease and the takeover take their key and ENI from it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger("spectra.aws")

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_S = 21600
MAX_TOKEN_TTL_S = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


class ImdsError(Exception):
    """The instance metadata service could not answer a request (after retries)."""


class _Status(Exception):
    """An HTTP error answer (its response already closed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface (ENI) attached to this instance."""

    mac: str
    interface_id: str
    device_number: int
    private_ips: tuple[str, ...]  # the primary private IPv4 address first
    subnet_id: str | None
    vpc_id: str | None
    subnet_cidr: str | None

    @property
    def primary_ip(self) -> str | None:
        return self.private_ips[0] if self.private_ips else None


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """What the instance metadata says about this instance, read once at boot."""

    instance_id: str
    region: str
    availability_zone: str
    account_id: str
    mac: str  # of the primary interface (device 0)
    interfaces: tuple[Interface, ...]  # by device number

    @property
    def primary(self) -> Interface:
        """The interface with device number 0 (the instance's primary ENI)."""
        for iface in self.interfaces:
            if iface.mac == self.mac:
                return iface
        raise ImdsError(f"no interface with the primary MAC {self.mac} in the metadata")


def identity_from_dict(data: dict[str, Any]) -> InstanceIdentity:
    """An :class:`InstanceIdentity` from its ``dataclasses.asdict`` form (a cache file)."""
    interfaces = tuple(
        Interface(**{**i, "private_ips": tuple(i["private_ips"])}) for i in data["interfaces"]
    )
    return InstanceIdentity(**{**data, "interfaces": interfaces})


class Imds:
    """An IMDSv2 session against ``endpoint`` (the lab and the tests pass a fake's URL)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token_ttl_s: int = TOKEN_TTL_S,
        timeout_s: float = 1.0,
        attempts: int = 3,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ValueError(f"token_ttl_s={token_ttl_s}: expected 1..{MAX_TOKEN_TTL_S}")
        if attempts < 1:
            raise ValueError(f"attempts={attempts}: expected at least 1")
        self.endpoint = endpoint.rstrip("/")
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None
        self._token_until = 0.0
        self.last_error: str | None = None

    # -- requests ------------------------------------------------------------------

    def _open(self, request: urllib.request.Request) -> str:
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                body: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise _Status(exc.code, str(exc.reason)) from None
        return body.decode()

    def _retrying(self, what: str, request: Callable[[], str]) -> str:
        last = "no attempt"
        for attempt in range(1, self.attempts + 1):
            try:
                return request()
            except _Status as exc:
                if exc.code < 500:
                    raise
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}"
                if what == "token" and isinstance(reason, TimeoutError):
                    last += (
                        " (a token PUT that never answers is what a container sees when the"
                        " instance's HttpPutResponseHopLimit is too low: set it to 2)"
                    )
            if attempt < self.attempts:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
        self.last_error = f"IMDS {self.endpoint} {what}: {last} after {self.attempts} attempts"
        raise ImdsError(self.last_error)

    def token(self) -> str:
        """A session token, fetched again shortly before its TTL ends."""
        now = self._monotonic()
        if self._token is not None and now < self._token_until:
            return self._token
        request = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={TTL_HEADER: str(self.token_ttl_s)},
        )
        try:
            token = self._retrying("token", partial(self._open, request))
        except _Status as exc:
            self.last_error = f"IMDS {self.endpoint} token: HTTP {exc.code} {exc.reason}"
            raise ImdsError(self.last_error) from None
        self._token = token
        self._token_until = now + max(1.0, self.token_ttl_s - min(60.0, self.token_ttl_s / 10))
        return token

    def get(self, path: str) -> str:
        """The text at ``/latest/<path>`` (``meta-data/instance-id``, ``dynamic/...``)."""
        text = self._get(path, absent_ok=False)
        assert text is not None
        return text

    def _get(self, path: str, *, absent_ok: bool) -> str | None:
        url = f"{self.endpoint}/latest/{path.lstrip('/')}"
        for renewed in (False, True):
            request = urllib.request.Request(url, headers={TOKEN_HEADER: self.token()})
            try:
                return self._retrying(path, partial(self._open, request))
            except _Status as exc:
                if exc.code == 404 and absent_ok:
                    return None
                if exc.code == 401 and not renewed:
                    self._token = None  # expired or revoked: one new token, one more try
                    continue
                self.last_error = f"IMDS {url}: HTTP {exc.code} {exc.reason}"
                raise ImdsError(self.last_error) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- what the product reads ----------------------------------------------------

    def interfaces(self) -> tuple[Interface, ...]:
        """Every attached interface, by device number."""
        macs = [m.strip("/") for m in self.get("meta-data/network/interfaces/macs/").split()]
        found = [self.interface(mac) for mac in macs if mac]
        return tuple(sorted(found, key=lambda i: i.device_number))

    def interface(self, mac: str) -> Interface:
        """One interface by MAC: its ENI id, device number, private IPs and subnet."""
        base = f"meta-data/network/interfaces/macs/{mac}"

        def optional(name: str) -> str | None:
            try:
                return self.get(f"{base}/{name}").strip() or None
            except ImdsError:
                return None

        return Interface(
            mac=mac,
            interface_id=self.get(f"{base}/interface-id").strip(),
            device_number=int(self.get(f"{base}/device-number").strip()),
            private_ips=tuple(self.get(f"{base}/local-ipv4s").split()),
            subnet_id=optional("subnet-id"),
            vpc_id=optional("vpc-id"),
            subnet_cidr=optional("subnet-ipv4-cidr-block"),
        )

    def identity(self) -> InstanceIdentity:
        """Instance id, region, AZ and account (the identity document) and interfaces."""
        raw = self.get("dynamic/instance-identity/document")
        try:
            doc = json.loads(raw)
            instance_id, region = doc["instanceId"], doc["region"]
            zone, account = doc["availabilityZone"], doc["accountId"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ImdsError(
                f"IMDS {self.endpoint} instance-identity document: expected JSON with "
                f"instanceId, region, availabilityZone, accountId ({exc})"
            ) from None
        identity = InstanceIdentity(
            instance_id=str(instance_id),
            region=str(region),
            availability_zone=str(zone),
            account_id=str(account),
            mac=self.get("meta-data/mac").strip(),
            interfaces=self.interfaces(),
        )
        log.info(
            "instance %s in %s (%s), %d interfaces",
            identity.instance_id,
            identity.availability_zone,
            identity.region,
            len(identity.interfaces),
        )
        return identity

    def user_data(self) -> str | None:
        """The instance's user data (``/latest/user-data``), ``None`` when it has none (404)."""
        return self._get("user-data", absent_ok=True)

    def status(self) -> dict[str, object]:
        """The endpoint and the last error, for the agent's status file."""
        return {"endpoint": self.endpoint, "last_error": self.last_error}
