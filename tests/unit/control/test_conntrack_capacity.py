"""Conntrack capacity: the memory formula, overrides, every NAT timeout applied, and
the kernel's counters (per-CPU rows summed) in the status file and ``/metrics``."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api import ApiSettings, create_app
from control.config import parse_document
from control.status import instance_status
from control.steps.base import StepContext
from control.steps.conntrack_capacity import conntrack_size, parse_stat
from control.steps.sysctl import TRANSITORY, SysctlStep
from control.store import SqliteStore
from tests.promtext import parse, value
from tests.unit.control.conftest import READ_TOKEN, auth

GIB = 1 << 30
Client = TestClient[web.Request, web.Application]
HEADER = (
    "entries  clashres found new invalid ignore delete chainlength insert insert_failed "
    "drop early_drop icmp_error  expect_new expect_create expect_delete search_restart"
)


def stat_row(entries: int, insert_failed: int, drop: int, early_drop: int) -> str:
    values = [entries, 0, 5, 9, 0, 0, 0, 0, 9, insert_failed, drop, early_drop, 0, 0, 0, 0, 1]
    return " ".join(f"{v:08x}" for v in values)


def fake_proc(tmp_path: Path, mem_kib: int, cpu_rows: list[str]) -> Path:
    proc = tmp_path / "proc"
    nf = proc / "sys/net/netfilter"
    nf.mkdir(parents=True)
    (proc / "sys/net/ipv4").mkdir(parents=True)
    (proc / "net/stat").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree:  1 kB\n")
    (proc / "net/stat/nf_conntrack").write_text("\n".join([HEADER, *cpu_rows]) + "\n")
    for name, number in (("max", 262144), ("buckets", 262144), ("count", 42)):
        (nf / f"nf_conntrack_{name}").write_text(f"{number}\n")
    return proc


def doc(nat: dict[str, Any] | None = None) -> Any:
    return parse_document({"interfaces": {"inside": "in0", "outside": "out0"}, "nat": nat or {}})


def test_size_follows_memory_within_bounds() -> None:
    assert conntrack_size(2 * GIB) == 262144
    assert conntrack_size(8 * GIB) == 1048576
    assert conntrack_size(GIB // 2) == 65536  # floor
    assert conntrack_size(1024 * GIB) == 4194304  # ceiling


def test_stat_rows_are_summed_per_cpu() -> None:
    text = "\n".join([HEADER, stat_row(77, 3, 4, 1), stat_row(77, 2, 2, 0)]) + "\n"
    totals = parse_stat(text)
    assert (totals["insert_failed"], totals["drop"], totals["early_drop"]) == (5, 6, 1)
    with pytest.raises(ValueError, match="fields"):
        parse_stat(HEADER + "\n00000001 00000002\n")


def test_every_timeout_and_the_size_are_applied(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 8 * GIB // 1024, [stat_row(42, 0, 0, 0)])
    step = SysctlStep(StepContext("gw", tmp_path, tmp_path), proc=proc)
    timeouts = {"tcp_established": 351, "tcp_transitory": 33, "udp": 31, "udp_stream": 181}
    step.apply(SysctlStep.render(doc({"timeouts": timeouts}), None))  # type: ignore[arg-type]
    nf = proc / "sys/net/netfilter"
    assert (nf / "nf_conntrack_tcp_timeout_established").read_text() == "351"
    for state in TRANSITORY:
        assert (nf / f"nf_conntrack_tcp_timeout_{state}").read_text() == "33"
    assert (nf / "nf_conntrack_udp_timeout").read_text() == "31"
    assert (nf / "nf_conntrack_max").read_text() == "1048576"
    assert (nf / "nf_conntrack_buckets").read_text() == "1048576"
    override = doc({"conntrack": {"max": 500000, "buckets": 131072}})
    step.apply(SysctlStep.render(override, None))  # type: ignore[arg-type]
    assert (nf / "nf_conntrack_max").read_text() == "500000"
    assert (nf / "nf_conntrack_buckets").read_text() == "131072"
    assert step.tick()["sizing"] == {"max": 500000, "buckets": 131072, "applied": True}


def test_defaults_match_aws_nat_gateway_idle_timeout() -> None:
    assert doc().nat.timeouts.tcp_established == 350
    assert doc().nat.conntrack.max == "auto"


def test_bad_size_names_the_field() -> None:
    with pytest.raises(Exception, match=r"nat\.conntrack\.max"):
        doc({"conntrack": {"max": 10}})


@pytest.mark.asyncio
async def test_counters_reach_status_and_metrics(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> None:
    proc = fake_proc(tmp_path, 2 * GIB // 1024, [stat_row(42, 3, 4, 1), stat_row(42, 2, 2, 5)])
    step = SysctlStep(StepContext("gw", tmp_path, tmp_path), proc=proc)
    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    (tmp_path / "run/ctcap-gw").mkdir(parents=True)
    state = {"pid": os.getpid(), "applied_version": 1, "conntrack": step.tick()}
    (tmp_path / "run/ctcap-gw/status.json").write_text(json.dumps(state))
    status = instance_status("ctcap-gw")
    assert status is not None
    assert status["counters"]["conntrack_insert_failed"] == 5

    app = create_app(sqlite_store, lambda: {"instances": {"ctcap-gw": status}}, api_settings)
    client = await aiohttp_client(app)
    text = await (await client.get("/metrics", headers=auth(READ_TOKEN))).text()
    types, samples = parse(text)
    assert types["spectra_dataplane_conntrack_count"] == "gauge"
    assert types["spectra_dataplane_conntrack_drop"] == "counter"
    assert value(samples, "spectra_dataplane_conntrack_count", instance="ctcap-gw") == 42
    assert value(samples, "spectra_dataplane_conntrack_max", instance="ctcap-gw") == 262144
    one = "ctcap-gw"
    assert value(samples, "spectra_dataplane_conntrack_insert_failed_total", instance=one) == 5
    assert value(samples, "spectra_dataplane_conntrack_drop_total", instance=one) == 6
    assert value(samples, "spectra_dataplane_conntrack_early_drop_total", instance=one) == 6
