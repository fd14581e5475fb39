"""A fake instance metadata service (IMDSv2 only), one per simulated instance.

Serves what :class:`control.aws.imds.Imds` reads, the way EC2 does with
``HttpTokens=required`` ("Use IMDSv2", EC2 user guide): ``PUT /latest/api/token`` with a
TTL of 1..21600 s (else 400) returns a token; a ``GET`` without a valid, unexpired token
gets 401.  ``hops`` > ``hop_limit`` models a caller too many hops away: its token PUT
never answers.  ``fail_next(n)`` answers the next n requests with 500 (retry tests).

The instance it describes is a :class:`FakeInstance`, or a callable returning one, so the
lab can serve live state (:func:`instance_from_ec2` reads it from moto's EC2).  Tests and
the lab use it; the product never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeEni:
    """One attached interface as the metadata shows it."""

    mac: str
    interface_id: str
    device_number: int
    private_ips: list[str]
    subnet_id: str = "subnet-0fake"
    vpc_id: str = "vpc-0fake"
    subnet_cidr: str = "10.0.0.0/24"


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
    user_data: str | None = None  # None: the instance has none (GET answers 404)


def instance_from_ec2(ec2: Any, instance_id: str) -> FakeInstance:
    """The instance as moto's (or EC2's) DescribeInstances shows it."""
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    zone = found["Placement"]["AvailabilityZone"]
    enis = []
    for eni in found["NetworkInterfaces"]:
        addresses = sorted(eni["PrivateIpAddresses"], key=lambda a: not a.get("Primary"))
        subnet = ec2.describe_subnets(SubnetIds=[eni["SubnetId"]])["Subnets"][0]
        enis.append(
            FakeEni(
                mac=eni["MacAddress"],
                interface_id=eni["NetworkInterfaceId"],
                device_number=eni["Attachment"]["DeviceIndex"],
                private_ips=[a["PrivateIpAddress"] for a in addresses],
                subnet_id=eni["SubnetId"],
                vpc_id=eni["VpcId"],
                subnet_cidr=subnet["CidrBlock"],
            )
        )
    return FakeInstance(
        instance_id=instance_id,
        region=zone[:-1],
        availability_zone=zone,
        account_id=found.get("OwnerId", "123456789012"),
        interfaces=sorted(enis, key=lambda e: e.device_number),
    )


def _paths(inst: FakeInstance) -> dict[str, str]:
    primary = min(inst.interfaces, key=lambda e: e.device_number)
    out = {
        "meta-data/instance-id": inst.instance_id,
        "meta-data/placement/availability-zone": inst.availability_zone,
        "meta-data/placement/region": inst.region,
        "meta-data/mac": primary.mac,
        "meta-data/local-ipv4": primary.private_ips[0],
        "meta-data/network/interfaces/macs/": "\n".join(f"{e.mac}/" for e in inst.interfaces),
        "dynamic/instance-identity/document": json.dumps(
            {
                "instanceId": inst.instance_id,
                "region": inst.region,
                "availabilityZone": inst.availability_zone,
                "accountId": inst.account_id,
                "privateIp": primary.private_ips[0],
            }
        ),
    }
    if inst.user_data is not None:
        out["user-data"] = inst.user_data
    for e in inst.interfaces:
        base = f"meta-data/network/interfaces/macs/{e.mac}"
        out[f"{base}/interface-id"] = e.interface_id
        out[f"{base}/device-number"] = str(e.device_number)
        out[f"{base}/local-ipv4s"] = "\n".join(e.private_ips)
        out[f"{base}/subnet-id"] = e.subnet_id
        out[f"{base}/vpc-id"] = e.vpc_id
        out[f"{base}/subnet-ipv4-cidr-block"] = e.subnet_cidr
    return out


class FakeImds:
    """An IMDSv2 server for one simulated instance: 127.0.0.1 on a random port unless
    ``host``/``port`` say otherwise (the AMI boot test serves 169.254.169.254:80)."""

    def __init__(
        self,
        instance: FakeInstance | Callable[[], FakeInstance] | None = None,
        *,
        hop_limit: int = 1,
        hops: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        source = instance if instance is not None else FakeInstance()
        self._source: Callable[[], FakeInstance] = (
            source if callable(source) else (lambda: source)  # type: ignore[return-value]
        )
        self.hop_limit = hop_limit
        self.hops = hops
        self._monotonic = monotonic
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self._closing = threading.Event()
        self.counts = {"token": 0, "get": 0, "refused": 0, "failed": 0, "dropped": 0}
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeImds:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

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
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return 400, "X-aws-ec2-metadata-token-ttl-seconds: expected 1..21600"
        token = uuid.uuid4().hex
        with self._lock:
            self._tokens[token] = self._monotonic() + int(ttl)
            self.counts["token"] += 1
        return 200, token

    def _get(self, token: str | None, path: str) -> tuple[int, str]:
        with self._lock:
            until = self._tokens.get(token or "")
            if until is None or self._monotonic() >= until:
                self.counts["refused"] += 1
                return 401, "Unauthorized"
            self.counts["get"] += 1
        value = _paths(self._source()).get(path)
        return (404, "Not Found") if value is None else (200, value)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if fake._take_failure():
                    return self._answer(500, "Internal Server Error")
                if self.path != "/latest/api/token":
                    return self._answer(404, "Not Found")
                if fake.hops > fake.hop_limit:  # the answer's IP TTL runs out on the way
                    fake.counts["dropped"] += 1
                    fake._closing.wait(5.0)
                    return None
                self._answer(
                    *fake._put_token(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
                )

            def do_GET(self) -> None:
                if fake._take_failure():
                    return self._answer(500, "Internal Server Error")
                if not self.path.startswith("/latest/"):
                    return self._answer(404, "Not Found")
                token = self.headers.get("X-aws-ec2-metadata-token")
                self._answer(*fake._get(token, self.path.removeprefix("/latest/")))

        return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve one instance described by a JSON file until terminated (the AMI boot test)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.imds")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", required=True, help="JSON: FakeInstance fields")
    args = parser.parse_args(argv)
    with open(args.instance) as f:
        raw = json.load(f)
    enis = [FakeEni(**e) for e in raw.pop("interfaces", [])]
    instance = FakeInstance(**raw, **({"interfaces": enis} if enis else {}))
    server = FakeImds(instance, host=args.host, port=args.port)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._server.serve_forever()


if __name__ == "__main__":
    main()
