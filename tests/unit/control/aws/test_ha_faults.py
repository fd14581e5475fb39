"""control.aws.ha under faults, against moto (the world of ``test_ha``): a takeover that
fails half way names the step and is retried to completion by the next lease period;
an operational role that is inert is a failed step in status, not a dead worker; a
launch whose data path never answers is ABANDONed with the reason."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from control.aws.session import RoleInert
from control.aws.takeover import Takeover
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.control.aws.conftest import admin_client
from tests.unit.control.aws.test_ha import NAT, World, boot, step
from tests.unit.control.aws.test_ha import world as world  # the fixture
from tests.unit.control.conftest import LIFECYCLE_LOG

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _eip(world: World) -> tuple[Any, Any]:
    found = world.ec2.describe_addresses(AllocationIds=[world.zone.allocation_id])["Addresses"]
    return found[0].get("NetworkInterfaceId"), found[0].get("PrivateIpAddress")


def test_a_takeover_denied_half_way_names_the_step_and_completes_next_period(
    world: World,
) -> None:
    """ReplaceRoute refused (AccessDenied of EC2's query API): the NAT address and the
    Elastic IP moved, the report says the routes failed and why, once as an event (a
    notification); a later period runs the takeover again, each done step finds its
    state, the routes move and that is an event too."""
    a = world.nodes[0]
    with FaultProxy(
        world.ec2.meta.endpoint_url,
        [Fault("ec2", "ReplaceRoute", "UnauthorizedOperation", status=403, times=1)],
    ) as proxy:
        ec2 = admin_client(proxy.url, "ec2")
        a.ha.takeover = Takeover(world.zone, a.enis, lambda: ec2, lambda: ec2, a.addresses)
        boot(world)
        step(a)
        first = a.ha.status.takeover
        assert a.ha.status.role == "leader" and not first["ok"]
        assert first["steps"] == {
            "nat_address": "assigned",
            "elastic_ip": "associated",
            "routes": "failed",
        }
        error = first["error"]
        assert error.startswith("routes: ReplaceRoute: UnauthorizedOperation"), error
        assert a.ha.as_dict()["error"] == first["error"]
        # the same step fails again (AWS messages may differ per request): one event
        proxy.faults[0].times, proxy.faults[0].message = 1, "Encoded authorization: xyz"
        world.clock.advance(1.0)
        step(a)
        assert a.ha.status.takeover["error"].endswith("Encoded authorization: xyz")
        events = a.ha.lease.status()["events"]
        assert [e["kind"] for e in events] == ["acquired", "takeover_failed"]
        assert events[-1]["reason"] == error and events[-1]["token"] == first["token"]
        assert world.default_route() == world.nodes[1].enis.inside_eni  # left as it was
        world.clock.advance(1.0)
        step(a)
        again = a.ha.status.takeover
        assert again["ok"] and again["token"] == first["token"], again
        assert again["steps"] == {
            "nat_address": "already held",
            "elastic_ip": "already associated",
            "routes": f"replaced {world.zone.route_table_ids[0]}",
        }
        assert a.ha.status.error is None
        assert proxy.injected == {("ec2", "ReplaceRoute"): 2}
        last = a.ha.lease.status()["events"][-1]
        assert last["kind"] == "takeover_recovered", last
        assert last["reason"] == "completed after: routes: UnauthorizedOperation", last
    assert world.default_route() == a.enis.inside_eni
    assert _eip(world) == (a.enis.outside_eni, NAT)


def test_an_inert_operational_role_is_a_failed_routes_step_and_retried(world: World) -> None:
    """The routes need the operational role; while it is inert (not deployed, wrong
    external ID) the takeover reports that as the routes step's failure -- the worker
    does not die with it -- and completes once the role answers."""
    a = world.nodes[0]
    inert = ["the role spectra-cross-account-role1 is not deployed"]

    def operational() -> Any:
        if inert:
            raise RoleInert(inert[0])
        return world.ec2

    a.ha.takeover = Takeover(world.zone, a.enis, lambda: world.ec2, operational, a.addresses)
    boot(world)
    step(a)
    report = a.ha.status.takeover
    assert report["steps"]["routes"] == "failed" and not report["ok"]
    assert report["error"] == f"routes: operational role inert: {inert[0]}"
    assert world.default_route() == world.nodes[1].enis.inside_eni
    inert.clear()
    world.clock.advance(1.0)
    step(a)
    assert a.ha.status.takeover["ok"] and world.default_route() == a.enis.inside_eni


def test_a_launch_whose_data_path_never_answers_is_abandoned_with_the_reason(
    world: World, moto_dir: Path
) -> None:
    node = world.node(0, health=lambda: False, launch_timeout_s=0.5)
    assert node.ha.boot(threading.Event()) is False
    health = node.ha.status.boot["health"]
    assert health.state == "failed" and health.detail == "health did not pass within 0.5s"
    lifecycle = node.ha.status.boot["lifecycle"]
    assert lifecycle.state == "ok" and "ABANDON" in lifecycle.detail, lifecycle
    actions = [json.loads(line) for line in (moto_dir / LIFECYCLE_LOG).read_text().splitlines()]
    assert (actions[-1]["hook"], actions[-1]["instance_id"], actions[-1]["result"]) == (
        "spectra-launch",
        node.instance_id,
        "ABANDON",
    )
    assert node.ha.lease.token is None  # it never joined the lease
