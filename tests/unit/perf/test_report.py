"""perf.report, perf.rr parsers, perf.generator and perf.tools: JSON shape, markdown
table, tool output parsing, trafgen config and the missing-tool message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perf import report
from perf.__main__ import main, parser, target_from
from perf.generator import SYN_DPORTS, SYN_SPORTS, SynFlood, UdpFlow, trafgen_config
from perf.nfq import Measure, _cost_results
from perf.report import Result
from perf.rr import parse_iperf3, parse_sockperf
from perf.target import Host, PerfError
from perf.tools import ToolMissing, require

pytestmark = pytest.mark.unit

SOCKPERF_TAIL = """\
sockperf: ---> <MAX> observation =  120.774
sockperf: ---> percentile 99.999 =  110.100
sockperf: ---> percentile 99.990 =   95.001
sockperf: ---> percentile 99.900 =   87.920
sockperf: ---> percentile 99.000 =   52.310
sockperf: ---> percentile 90.000 =   40.000
sockperf: ---> percentile 50.000 =   32.820
sockperf: ---> <MIN> observation =   20.100
"""


def test_json_document_shape_and_ratio() -> None:
    results = [
        Result("cpu_ns_per_packet", "kernel_masquerade", "ns/packet", 2500.0,
               "kernel_masquerade", 2500.0, [{"valid": True}], 200_000, 11.0),
        Result("cpu_ns_per_packet", "xdp_fastpath", "ns/packet", 1250.0,
               "kernel_masquerade", 2500.0, [{"valid": True}], 200_000, 23.0),
        Result("cpu_ns_per_packet", "geneve_two_arm", "ns/packet", None, valid=False,
               note="not yet built"),
    ]  # fmt: skip
    doc = json.loads(json.dumps(report.document("dataplane", results)))
    assert doc["suite"] == "dataplane"
    assert set(doc["host"]) == {"cpu", "kernel", "cores"}
    first = doc["results"][1]
    for key in ("metric", "unit", "value", "baseline", "baseline_value", "ratio", "runs",
                "offered_pps", "pkts_per_wakeup", "valid"):  # fmt: skip
        assert key in first
    assert first["ratio"] == 0.5
    assert doc["results"][2]["value"] is None and doc["results"][2]["ratio"] is None


def test_markdown_has_one_row_per_result() -> None:
    results = [Result("m", "p", "ns/packet", 1234.0, "b", 2468.0, [{"valid": True}])]
    table = report.markdown(results)
    assert table.count("\n") == 3
    assert "| m | p | 1,234 |" in table and "| 0.50 |" in table


def test_sockperf_and_iperf3_parsers() -> None:
    assert parse_sockperf(SOCKPERF_TAIL) == {"p50": 32.82, "p99": 52.31, "p99.9": 87.92}
    with pytest.raises(PerfError):
        parse_sockperf("sockperf: no percentiles here")
    assert parse_iperf3('{"end": {"sum_received": {"bits_per_second": 3.2e9}}}') == 3.2e9
    with pytest.raises(PerfError, match="unable to connect"):  # an invalid run, not a crash
        parse_iperf3('{"start": {}, "end": {}, "error": "unable to connect to server"}')


def test_trafgen_config_is_a_60_byte_udp_frame() -> None:
    cfg = trafgen_config(UdpFlow("d2:70:28:8f:3d:ff", "ba:e3:5e:b1:11:11", "10.0.1.10",
                                 "198.51.100.10", 40000, 9))  # fmt: skip
    assert "0xba, 0xe3, 0x5e, 0xb1, 0x11, 0x11, 0xd2" in cfg  # destination MAC first
    assert "0x0a, 0x00, 0x01, 0x0a, 0xc6, 0x33, 0x64, 0x0a" in cfg
    assert "const16(46)" in cfg and "const16(26)" in cfg and "fill(0x41, 18)" in cfg


def test_syn_flood_gives_every_packet_a_new_tuple_for_millions_of_packets() -> None:
    cfg = SynFlood("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.1.10", "198.51.100.10").config()
    assert "da=02:00:00:00:00:02, sa=02:00:00:00:00:01" in cfg
    assert "sa=10.0.1.10, da=198.51.100.10" in cfg and ", syn," in cfg
    (slo, shi), (dlo, dhi) = SYN_SPORTS, SYN_DPORTS
    assert f"sp=dinc({slo}, {shi})" in cfg and f"dp=dinc({dlo}, {dhi})" in cfg
    # the two counters step together: distinct pairs repeat only after lcm(periods)
    period = math.lcm(shi - slo + 1, dhi - dlo + 1)
    assert period == (shi - slo + 1) * (dhi - dlo + 1) > 16_000_000
    assert shi - slo + 1 > 60_000  # one NAT port space per destination port


def test_nfq_measure_counts_lossless_runs_only() -> None:
    full = Measure("builtin_bypass", 30_000, 60_000, 59_500, 2.0, 119_000_000, 10)
    lossy = Measure("naive_nfqueue", 30_000, 60_000, 40_000, 2.0, 400_000_000, 60_000)
    assert full.lossless and full.ns_per_packet == 2000.0 and full.delivered_pps == 29_750.0
    assert not lossy.lossless
    (result,) = [r for r in _cost_results({"naive_nfqueue": [lossy], "x": [full]}) if r.path == "x"]
    assert result.value == 2000.0 and result.baseline_value is None  # no lossless baseline


def test_missing_tool_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("perf.tools.shutil.which", lambda tool: None)
    with pytest.raises(ToolMissing, match=r"trafgen \(Debian package netsniff-ng\)"):
        require(["trafgen"])


def test_cli_exits_nonzero_on_a_missing_tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("perf.tools.shutil.which", lambda tool: None)
    assert main(["dataplane", "--json", str(tmp_path / "x.json")]) == 2
    assert "apt-get install" in capsys.readouterr().err


def test_real_host_mode_needs_every_parameter() -> None:
    args = parser().parse_args(["dataplane", "--json", "x", "--ingress-dev", "ens6"])
    with pytest.raises(PerfError, match="--egress-dev"):
        target_from(args)


def test_lab_mode_is_the_default_and_hosts_build_argv() -> None:
    target = target_from(parser().parse_args(["dataplane", "--json", "x"]))
    assert target.lab and target.ingress_dev == "inside"
    assert Host(netns="ns1").argv("ip", "link") == ["ip", "netns", "exec", "ns1", "ip", "link"]
    assert Host(ssh="gen").argv("true")[:2] == ["ssh", "-o"]


def test_nfq_winner_per_row() -> None:
    from perf.nfq import winners
    from perf.report import Result

    def r(metric: str, path: str, value: float | None, lower: bool = True) -> Result:
        return Result(metric, path, "x", value, "naive_nfqueue", 1.0, valid=value is not None,
                      lower_is_better=lower)  # fmt: skip

    results = [
        r("gateway_cpu_ns_per_packet", "builtin_inspect", 9000.0),
        r("gateway_cpu_ns_per_packet", "suricata_inspect", 4000.0),
        r("delivered_pps", "builtin_bypass", 250_000.0, lower=False),
        r("delivered_pps", "suricata_bypass", 200_000.0, lower=False),
        r("gateway_cpu_ns_per_packet", "builtin_inspect_10k", None),
        r("gateway_cpu_ns_per_packet", "suricata_inspect_10k", 5000.0),
        r("delivered_pps", "builtin_bypass_10k", 90_000.0, lower=False),
        r("delivered_pps", "suricata_bypass_10k", 200_000.0, lower=False),
    ]
    assert winners(results) == {
        "gateway_cpu_ns_per_packet:inspect": "suricata",
        "delivered_pps:bypass": "builtin",
        "gateway_cpu_ns_per_packet:inspect_10k": "none",
        "delivered_pps:bypass_10k": "suricata",
    }
