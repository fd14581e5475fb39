"""A fake EC2 instance metadata service (IMDSv2 only), one per simulated instance: the
one implementation the unit tests and the VPC lab (:mod:`perf.lab.vpc.imds`) share.
The product never imports it.

It follows the EC2 User Guide, "Use the Instance Metadata Service to access instance
metadata" (IMDSv2, as with ``HttpTokens=required``): ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` of 1..21600 (else 400) returns a session token
(a PUT carrying ``X-Forwarded-For`` is refused, 403); every ``GET`` needs
``X-aws-ec2-metadata-token`` with a live token, else 401. ``hops`` > ``hop_limit``
models a caller too many hops away (``HttpPutResponseHopLimit``): its token PUT never
answers. ``fail_next(n)`` answers the next n requests with 500; a source that raises
(the endpoint is down, the instance gone) is a 500 naming the error.

Served paths under ``/latest/``: ``meta-data/`` (instance-id, instance-type, ami-id,
local-ipv4, mac, placement/{availability-zone,region},
network/interfaces/macs/<mac>/{device-number,interface-id,local-ipv4s,mac,subnet-id,
subnet-ipv4-cidr-block,vpc-id,vpc-ipv4-cidr-block}, autoscaling/target-lifecycle-state
(in an Auto Scaling group only), iam/security-credentials/<role> (with a role only)),
and ``dynamic/instance-identity/document``; ``user-data`` when the instance has some
(else 404, as EC2 answers). ``python -m perf.lab.imds --instance FILE`` serves one
:class:`FakeInstance` read from JSON (the AMI boot test).

The instance is a :class:`FakeInstance`, or a callable returning one: :class:`Ec2Instance`
reads it from EC2 (moto) at request time, so an address or ENI that moved shows at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socketserver
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600
LIFECYCLE_PATH = "meta-data/autoscaling/target-lifecycle-state"


@dataclass
class FakeEni:
    """One attached interface as the metadata shows it."""

    mac: str
    interface_id: str
    device_number: int
    private_ips: list[str]  # the primary private IPv4 address first
    subnet_id: str = "subnet-0fake"
    vpc_id: str = "vpc-0fake"
    subnet_cidr: str = "10.0.0.0/24"
    vpc_cidr: str = "10.0.0.0/16"


@dataclass
class FakeInstance:
    """What the fake metadata service describes."""

    instance_id: str = "i-0123456789abcdef0"
    region: str = "eu-west-1"
    availability_zone: str = "eu-west-1a"
    account_id: str = "123456789012"
    interfaces: list[FakeEni] = field(
        default_factory=lambda: [FakeEni("0e:00:00:00:00:01", "eni-0fake1", 0, ["10.0.0.10"])]
    )
    instance_type: str = "c6in.large"
    image_id: str = "ami-0fake"
    launch_time: str = "2026-01-01T00:00:00Z"
    lifecycle_state: str | None = None  # None: not in an Auto Scaling group (404)
    iam_role: str | None = None  # None: no instance profile (404)
    user_data: str | None = None  # None: the instance has none (404)


class Ec2Instance:
    """The instance ``instance_id`` as EC2 (or moto) shows it now: DescribeInstances on
    every call (subnet and VPC CIDRs, which never change, are read once); with an
    ``autoscaling`` client, :meth:`lifecycle_state` reads the group's view of it."""

    def __init__(
        self,
        ec2: Any,
        instance_id: str,
        autoscaling: Any = None,
        iam_role: str | None = None,
    ) -> None:
        self.ec2 = ec2
        self.autoscaling = autoscaling
        self.instance_id = instance_id
        self.iam_role = iam_role
        self._cidrs: dict[str, str] = {}
        self._lock = threading.Lock()  # one botocore client, many handler threads

    def _cidr(self, kind: str, ident: str) -> str:
        if ident not in self._cidrs:
            if kind == "subnet":
                found = self.ec2.describe_subnets(SubnetIds=[ident])["Subnets"][0]
            else:
                found = self.ec2.describe_vpcs(VpcIds=[ident])["Vpcs"][0]
            self._cidrs[ident] = str(found["CidrBlock"])
        return self._cidrs[ident]

    def __call__(self) -> FakeInstance:
        with self._lock:
            res = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"]
            found = res[0]["Instances"][0]
            enis = []
            for eni in found["NetworkInterfaces"]:
                addresses = sorted(eni["PrivateIpAddresses"], key=lambda a: not a.get("Primary"))
                enis.append(
                    FakeEni(
                        mac=eni["MacAddress"],
                        interface_id=eni["NetworkInterfaceId"],
                        device_number=int(eni["Attachment"]["DeviceIndex"]),
                        private_ips=[a["PrivateIpAddress"] for a in addresses],
                        subnet_id=eni["SubnetId"],
                        vpc_id=eni["VpcId"],
                        subnet_cidr=self._cidr("subnet", eni["SubnetId"]),
                        vpc_cidr=self._cidr("vpc", eni["VpcId"]),
                    )
                )
        zone = str(found["Placement"]["AvailabilityZone"])
        return FakeInstance(
            instance_id=self.instance_id,
            region=zone[:-1],
            availability_zone=zone,
            account_id=str(found.get("OwnerId", "123456789012")),
            interfaces=sorted(enis, key=lambda e: e.device_number),
            instance_type=str(found["InstanceType"]),
            image_id=str(found["ImageId"]),
            launch_time=found["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            iam_role=self.iam_role,
        )

    def lifecycle_state(self) -> str | None:
        """The Auto Scaling target lifecycle state (a pending instance is headed for
        InService), or None outside a group."""
        if self.autoscaling is None:
            return None
        with self._lock:
            found = self.autoscaling.describe_auto_scaling_instances(
                InstanceIds=[self.instance_id]
            )["AutoScalingInstances"]
        if not found:
            return None
        state = str(found[0]["LifecycleState"])
        return "InService" if state.startswith(("InService", "Pending")) else state


def instance_from_ec2(ec2: Any, instance_id: str) -> FakeInstance:
    """The instance as EC2's DescribeInstances shows it now."""
    return Ec2Instance(ec2, instance_id)()


def _credentials() -> str:
    now = datetime.now(UTC)
    return json.dumps(
        {
            "Code": "Success",
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIAFAKEIMDSINSTANCE",
            "SecretAccessKey": "fake-imds-instance-secret",
            "Token": "fake-imds-instance-session-token",
            "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        indent=2,
    )


def paths(inst: FakeInstance) -> dict[str, str]:
    """Every path (under /latest/, no trailing slash) and its text, but the lifecycle
    state, which is read on its own."""
    primary = min(inst.interfaces, key=lambda e: e.device_number)
    root = ["ami-id", "instance-id", "instance-type", "local-ipv4", "mac", "network/"]
    root += ["placement/"] + (["iam/"] if inst.iam_role else [])
    out = {
        "meta-data": "\n".join(sorted(root)),
        "meta-data/instance-id": inst.instance_id,
        "meta-data/instance-type": inst.instance_type,
        "meta-data/ami-id": inst.image_id,
        "meta-data/placement": "availability-zone\nregion",
        "meta-data/placement/availability-zone": inst.availability_zone,
        "meta-data/placement/region": inst.region,
        "meta-data/mac": primary.mac,
        "meta-data/local-ipv4": primary.private_ips[0],
        "meta-data/network/interfaces/macs": "\n".join(f"{e.mac}/" for e in inst.interfaces),
        "dynamic/instance-identity/document": json.dumps(
            {
                "accountId": inst.account_id,
                "architecture": "x86_64",
                "availabilityZone": inst.availability_zone,
                "imageId": inst.image_id,
                "instanceId": inst.instance_id,
                "instanceType": inst.instance_type,
                "pendingTime": inst.launch_time,
                "privateIp": primary.private_ips[0],
                "region": inst.region,
                "version": "2017-09-30",
            },
            indent=2,
        ),
    }
    if inst.user_data is not None:
        out["user-data"] = inst.user_data
    if inst.iam_role:
        out["meta-data/iam/security-credentials"] = inst.iam_role
        out[f"meta-data/iam/security-credentials/{inst.iam_role}"] = _credentials()
    for e in inst.interfaces:
        fields = {
            "device-number": str(e.device_number),
            "interface-id": e.interface_id,
            "local-ipv4s": "\n".join(e.private_ips),
            "mac": e.mac,
            "subnet-id": e.subnet_id,
            "subnet-ipv4-cidr-block": e.subnet_cidr,
            "vpc-id": e.vpc_id,
            "vpc-ipv4-cidr-block": e.vpc_cidr,
        }
        base = f"meta-data/network/interfaces/macs/{e.mac}"
        out[base] = "\n".join(sorted(fields))
        out |= {f"{base}/{k}": v for k, v in fields.items()}
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the address's name (getfqdn): a DNS timeout
        # in a namespace without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class FakeImds:
    """An IMDSv2 server for one simulated instance (by default on 127.0.0.1, a free
    port); ``lifecycle`` overrides the instance's lifecycle state with a live read."""

    def __init__(
        self,
        instance: FakeInstance | Callable[[], FakeInstance] | None = None,
        *,
        lifecycle: Callable[[], str | None] | None = None,
        hop_limit: int = 1,
        hops: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        fixed = FakeInstance() if instance is None else instance
        self._source = fixed if callable(fixed) else (lambda: fixed)
        self._lifecycle = lifecycle or (lambda: self._source().lifecycle_state)
        self.hop_limit = hop_limit
        self.hops = hops
        self._monotonic = monotonic
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self._closing = threading.Event()
        self.counts = {"token": 0, "get": 0, "refused": 0, "failed": 0, "dropped": 0}
        self._server = _Server((address, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeImds:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until the process ends (the lab's metadata process)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeImds:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` requests with HTTP 500."""
        with self._lock:
            self._failures = n

    def revoke_tokens(self) -> None:
        """Forget every token (as after an instance stop/start)."""
        with self._lock:
            self._tokens.clear()

    # -- the handler -------------------------------------------------------------------

    def _take_failure(self) -> bool:
        with self._lock:
            if self._failures > 0:
                self._failures -= 1
                self.counts["failed"] += 1
                return True
            return False

    def _put_token(self, ttl: str | None) -> tuple[int, str]:
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return 400, f"{TTL_HEADER}: expected 1..{MAX_TTL}"
        token = uuid.uuid4().hex
        with self._lock:
            now = self._monotonic()
            self._tokens = {t: until for t, until in self._tokens.items() if until > now}
            self._tokens[token] = now + int(ttl)
            self.counts["token"] += 1
        return 200, token

    def _get(self, token: str | None, path: str) -> tuple[int, str]:
        with self._lock:
            until = self._tokens.get(token or "")
            if until is None or self._monotonic() >= until:
                self.counts["refused"] += 1
                return 401, "Unauthorized"
            self.counts["get"] += 1
        path = path.strip("/")
        try:
            value = self._lifecycle() if path == LIFECYCLE_PATH else paths(self._source()).get(path)
        except Exception as exc:  # the endpoint is down or the instance is gone
            return 500, f"{type(exc).__name__}: {exc}"
        return (404, "Not Found") if value is None else (200, value)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "EC2ws"

            def log_message(self, *_: Any) -> None:
                pass

            def _answer(
                self, status: int, text: str, headers: dict[str, str] | None = None
            ) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if length := int(self.headers.get("Content-Length") or 0):
                    self.rfile.read(length)
                if fake._take_failure():
                    return self._answer(500, "Internal Server Error")
                if self.path != "/latest/api/token":
                    return self._answer(404, "Not Found")
                if self.headers.get("X-Forwarded-For"):
                    return self._answer(403, "Forbidden")
                if fake.hops > fake.hop_limit:  # the answer's IP TTL runs out on the way
                    fake.counts["dropped"] += 1
                    fake._closing.wait(5.0)
                    self.close_connection = True
                    return None
                ttl = self.headers.get(TTL_HEADER)
                status, text = fake._put_token(ttl)
                self._answer(status, text, {TTL_HEADER: str(ttl)} if status == 200 else None)

            def do_GET(self) -> None:
                if fake._take_failure():
                    return self._answer(500, "Internal Server Error")
                if not self.path.startswith("/latest/"):
                    return self._answer(404, "Not Found")
                token = self.headers.get(TOKEN_HEADER)
                self._answer(*fake._get(token, self.path.removeprefix("/latest/")))

        return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve one instance described by a JSON file (:class:`FakeInstance` fields, its
    ``interfaces`` as :class:`FakeEni` fields) until terminated; prints its URL first."""
    parser = argparse.ArgumentParser(prog="python -m perf.lab.imds")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", required=True, help="JSON: FakeInstance fields")
    args = parser.parse_args(argv)
    with open(args.instance) as f:
        raw = json.load(f)
    instance = FakeInstance(**raw)
    instance.interfaces = [FakeEni(**e) for e in raw.get("interfaces", [])] or instance.interfaces
    server = FakeImds(instance, address=args.address, port=args.port)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
