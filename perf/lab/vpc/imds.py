"""A fake EC2 instance metadata service (IMDSv2 only) for one lab instance.

Serves on 169.254.169.254:80 inside the instance's namespace and answers from the lab's
moto endpoint at request time, so an address or an ENI that moved shows up at once.
It follows the EC2 User Guide, "Use the Instance Metadata Service to access instance
metadata" (IMDSv2): ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600) returns a session token; every other
request needs ``X-aws-ec2-metadata-token`` with a live token, else 401 (IMDSv1 is
disabled, as ``HttpTokens=required`` does); a token PUT carrying ``X-Forwarded-For``
is refused (403). Served paths: ``meta-data/`` (instance-id, instance-type, ami-id,
local-ipv4, mac, placement/{availability-zone,region}, network/interfaces/macs/<mac>/
{device-number,interface-id,local-ipv4s,subnet-id,subnet-ipv4-cidr-block,vpc-id,
vpc-ipv4-cidr-block}, autoscaling/target-lifecycle-state,
iam/security-credentials/<role>) and ``dynamic/instance-identity/document``.

Run as ``python -m perf.lab.vpc.imds --instance-id I [--endpoint-url U] [--address A]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from perf.lab.vpc.seed import client
from perf.lab.vpc.topology import ENDPOINT_URL, IMDS_IP, REGION

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600
IMDS_PORT = 80
ROLE = "spectra-lab-instance"
ACCOUNT = "123456789012"


class NotFound(Exception):
    """The metadata path does not exist for this instance."""


class Metadata:
    """The metadata tree of one instance, read from the EC2 API on each call."""

    def __init__(self, instance_id: str, endpoint_url: str) -> None:
        self.instance_id = instance_id
        self.region = REGION
        self.ec2 = client("ec2", endpoint_url, read_timeout=5)
        self.autoscaling = client("autoscaling", endpoint_url, read_timeout=5)
        self._lock = threading.Lock()

    def _instance(self) -> dict[str, Any]:
        with self._lock:
            res = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"]
        inst: dict[str, Any] = res[0]["Instances"][0]
        return inst

    def _enis(self) -> list[dict[str, Any]]:
        with self._lock:
            enis: list[dict[str, Any]] = self.ec2.describe_network_interfaces(
                Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}]
            )["NetworkInterfaces"]
        return sorted(enis, key=lambda e: int(e["Attachment"]["DeviceIndex"]))

    def _cidr(self, kind: str, ident: str) -> str:
        with self._lock:
            if kind == "subnet":
                return str(self.ec2.describe_subnets(SubnetIds=[ident])["Subnets"][0]["CidrBlock"])
            return str(self.ec2.describe_vpcs(VpcIds=[ident])["Vpcs"][0]["CidrBlock"])

    def get(self, path: str) -> str:
        """The text at ``path`` (relative to /latest/), or :class:`NotFound`."""
        path = path.strip("/")
        if path == "dynamic/instance-identity/document":
            return json.dumps(self.identity(), indent=2)
        if path in ("meta-data", ""):
            return "\n".join(_ROOT)
        if not path.startswith("meta-data/"):
            raise NotFound(path)
        key = path.removeprefix("meta-data/")
        simple: dict[str, Callable[[], str]] = {
            "instance-id": lambda: self.instance_id,
            "instance-type": lambda: str(self._instance()["InstanceType"]),
            "ami-id": lambda: str(self._instance()["ImageId"]),
            "local-ipv4": lambda: str(self._instance()["PrivateIpAddress"]),
            "mac": lambda: str(self._enis()[0]["MacAddress"]),
            "placement": lambda: "availability-zone\nregion",
            "placement/availability-zone": self._zone,
            "placement/region": lambda: self.region,
            "network/interfaces/macs": lambda: "\n".join(
                f"{e['MacAddress']}/" for e in self._enis()
            ),
            "autoscaling/target-lifecycle-state": self._lifecycle,
            "iam/security-credentials": lambda: ROLE,
            f"iam/security-credentials/{ROLE}": lambda: json.dumps(_credentials(), indent=2),
        }
        if key in simple:
            return simple[key]()
        if key.startswith("network/interfaces/macs/"):
            return self._mac(key.removeprefix("network/interfaces/macs/"))
        raise NotFound(path)

    def _zone(self) -> str:
        return str(self._instance()["Placement"]["AvailabilityZone"])

    def _lifecycle(self) -> str:
        with self._lock:
            found = self.autoscaling.describe_auto_scaling_instances(
                InstanceIds=[self.instance_id]
            )["AutoScalingInstances"]
        if not found:
            raise NotFound("autoscaling/target-lifecycle-state")
        state = str(found[0]["LifecycleState"])
        return "InService" if state.startswith(("InService", "Pending")) else state

    def _mac(self, rest: str) -> str:
        mac, _, field = rest.partition("/")
        eni = next((e for e in self._enis() if e["MacAddress"] == mac.lower()), None)
        if eni is None:
            raise NotFound(rest)
        fields: dict[str, Callable[[], str]] = {
            "device-number": lambda: str(eni["Attachment"]["DeviceIndex"]),
            "interface-id": lambda: str(eni["NetworkInterfaceId"]),
            "local-ipv4s": lambda: "\n".join(
                p["PrivateIpAddress"] for p in eni["PrivateIpAddresses"]
            ),
            "mac": lambda: str(eni["MacAddress"]),
            "subnet-id": lambda: str(eni["SubnetId"]),
            "subnet-ipv4-cidr-block": lambda: self._cidr("subnet", eni["SubnetId"]),
            "vpc-id": lambda: str(eni["VpcId"]),
            "vpc-ipv4-cidr-block": lambda: self._cidr("vpc", eni["VpcId"]),
        }
        if field == "":
            return "\n".join(sorted(fields))
        if field not in fields:
            raise NotFound(rest)
        return fields[field]()

    def identity(self) -> dict[str, Any]:
        inst = self._instance()
        return {
            "accountId": ACCOUNT,
            "architecture": "x86_64",
            "availabilityZone": inst["Placement"]["AvailabilityZone"],
            "imageId": inst["ImageId"],
            "instanceId": self.instance_id,
            "instanceType": inst["InstanceType"],
            "pendingTime": inst["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "privateIp": inst["PrivateIpAddress"],
            "region": self.region,
            "version": "2017-09-30",
        }


_ROOT = (
    "ami-id",
    "autoscaling/",
    "iam/",
    "instance-id",
    "instance-type",
    "local-ipv4",
    "mac",
    "network/",
    "placement/",
)


def _credentials() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "Code": "Success",
        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAVPCLABINSTANCE01",
        "SecretAccessKey": "vpclab-instance-secret",
        "Token": "vpclab-instance-session-token",
        "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class Tokens:
    """IMDSv2 session tokens and their expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > self._clock()


def make_handler(metadata: Metadata, tokens: Tokens) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "EC2ws"

        def _send(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/latest/api/token":
                self._send(404)
                return
            if self.headers.get("X-Forwarded-For"):
                self._send(403)
                return
            try:
                ttl = int(self.headers.get(TTL_HEADER, ""))
            except ValueError:
                ttl = 0
            if not 1 <= ttl <= MAX_TTL:
                self._send(400)
                return
            self._send(200, tokens.issue(ttl), {TTL_HEADER: str(ttl)})

        def do_GET(self) -> None:
            if not tokens.valid(self.headers.get(TOKEN_HEADER)):
                self._send(401)
                return
            if not self.path.startswith("/latest/"):
                self._send(404)
                return
            try:
                body = metadata.get(self.path.removeprefix("/latest/"))
            except NotFound:
                self._send(404)
                return
            except Exception as exc:  # the endpoint is down or the instance is gone
                self._send(500, f"{type(exc).__name__}: {exc}")
                return
            self._send(200, body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the address's name (getfqdn): a DNS timeout
        # in a namespace without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = (
            str(self.server_address[0]),
            int(self.server_address[1]),
        )


def serve(instance_id: str, endpoint_url: str, address: str = IMDS_IP, port: int = 80) -> None:
    metadata = Metadata(instance_id, endpoint_url)
    _Server((address, port), make_handler(metadata, Tokens())).serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.vpc.imds")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--endpoint-url", default=ENDPOINT_URL)
    parser.add_argument("--address", default=IMDS_IP)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    serve(args.instance_id, args.endpoint_url, args.address, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
