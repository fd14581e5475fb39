"""The VPC lab's metadata service of one gateway instance: :class:`perf.lab.imds.FakeImds`
(IMDSv2 only) on 169.254.169.254:80 inside the instance's namespace, answering from the
lab's moto endpoint at request time (:class:`perf.lab.imds.Ec2Instance`), so an address
or an ENI that moved shows up at once; the Auto Scaling lifecycle state comes from the
lab's groups and the instance profile is :data:`ROLE`.

Run as ``python -m perf.lab.vpc.imds --instance-id I [--endpoint-url U] [--address A]``.
"""

from __future__ import annotations

import argparse

from perf.lab.imds import Ec2Instance, FakeImds
from perf.lab.vpc.seed import client
from perf.lab.vpc.topology import ENDPOINT_URL, IMDS_IP

ROLE = "spectra-lab-instance"


def serve(instance_id: str, endpoint_url: str, address: str = IMDS_IP, port: int = 80) -> None:
    source = Ec2Instance(
        client("ec2", endpoint_url, read_timeout=5),
        instance_id,
        autoscaling=client("autoscaling", endpoint_url, read_timeout=5),
        iam_role=ROLE,
    )
    FakeImds(source, lifecycle=source.lifecycle_state, address=address, port=port).serve_forever()


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
