"""Pinning and adoption, verifier/compile errors, attach with native -> generic
fallback."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bpf.conftest import TEST_OPTIONS, TEST_PIN_ROOT, require_bpf
from tests.fixtures.packets import TCP_OUT, case_by_name
from xdp import Dataplane, libbpf, loader
from xdp.loader import CompileError, LoaderError, VerifierError
from xdp.reasons import XdpAction
from xdp.testrun import run

pytestmark = pytest.mark.bpf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def fresh_instance() -> Iterator[str]:
    """A second, separately compiled instance (own maps), unpinned afterwards."""
    require_bpf()
    instance = f"adopt-{os.getpid()}"
    yield instance
    loader.unpin(loader.pin_dir_for(instance, TEST_PIN_ROOT))


def test_adopted_instance_keeps_maps_and_programs(
    dataplane: Dataplane, fresh_instance: str
) -> None:
    first = Dataplane.load(fresh_instance, TEST_OPTIONS, pin_root=TEST_PIN_ROOT)
    assert first.objects.owner is not dataplane.objects.owner, "needs its own maps"
    first.add_flow(TCP_OUT.key, TCP_OUT.entry)
    first.set_tx_port(1)
    first.close()
    del first
    gc.collect()

    adopted = Dataplane.load(fresh_instance, TEST_OPTIONS, pin_root=TEST_PIN_ROOT)
    try:
        assert adopted.objects.owner is None, "loaded from pins, not compiled"
        assert adopted.flows() == [(TCP_OUT.key, TCP_OUT.entry)]
        assert dataplane.flow(TCP_OUT.key) is None, "instances share no maps"
        case = case_by_name("tcp_established_outbound_snat")
        assert run(adopted.program_fd(), case.input_bytes()).action == XdpAction.REDIRECT
        assert adopted.counters()["reasons"]["REDIRECT"]["packets"] == 1
    finally:
        adopted.close()


def test_pins_of_another_build_are_replaced_not_adopted(
    fresh_instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = Dataplane.load(fresh_instance, TEST_OPTIONS, pin_root=TEST_PIN_ROOT)
    old.add_flow(TCP_OUT.key, TCP_OUT.entry)
    old_id = libbpf.obj_id(old.program_fd())
    old.close()
    pin_dir = loader.pin_dir_for(fresh_instance, TEST_PIN_ROOT)
    (marker,) = pin_dir.glob("layout-*")
    marker.rmdir()
    (pin_dir / "layout-0123456789abcdef").mkdir()  # another build's pins
    assert not loader.is_pinned(pin_dir)
    with caplog.at_level(logging.WARNING, logger="spectra.xdp"):
        new = Dataplane.load(fresh_instance, TEST_OPTIONS, pin_root=TEST_PIN_ROOT)
    try:
        assert "pins of another build" in caplog.text
        assert new.objects.owner is not None, "compiled, not adopted"
        assert libbpf.obj_id(new.program_fd()) != old_id
        assert new.flows() == [], "the old build's maps are not reused"
        assert loader.is_pinned(pin_dir) and [m.name for m in pin_dir.glob("layout-*")] == [
            f"layout-{loader.layout_id()}"
        ]
    finally:
        new.close()


def test_adopt_without_pins_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no complete set of pins"):
        Dataplane.adopt("nothing-here", pin_root=tmp_path)


def test_verifier_rejection_names_the_program_and_shows_the_log() -> None:
    require_bpf()
    with pytest.raises(VerifierError) as err:
        loader.compile_source(FIXTURES / "unbounded_read.bpf.c", [], ["xdp_unbounded_read"])
    assert err.value.program == "xdp_unbounded_read"
    assert "xdp_unbounded_read" in str(err.value)
    assert "invalid access to packet" in err.value.log


def test_compile_error_shows_the_compiler_message(tmp_path: Path) -> None:
    require_bpf()
    broken = tmp_path / "broken.bpf.c"
    broken.write_text("int xdp_broken(struct xdp_md *ctx) { return undeclared_symbol; }\n")
    with pytest.raises(CompileError, match="undeclared_symbol"):
        loader.compile_source(broken, [], ["xdp_broken"])


@pytest.fixture
def test_links() -> Iterator[dict[str, int]]:
    """A bridge (no native XDP in its driver) and a veth pair (native XDP)."""
    require_bpf()
    from pyroute2 import IPRoute

    names = {"nonative": "spxt-br0", "veth": "spxt-veth0", "peer": "spxt-veth1"}
    with IPRoute() as ipr:
        ipr.link("add", ifname=names["nonative"], kind="bridge")
        ipr.link("add", ifname=names["veth"], kind="veth", peer=names["peer"])
        for name in names.values():
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        try:
            yield {role: ipr.link_lookup(ifname=name)[0] for role, name in names.items()}
        finally:
            for name in (names["nonative"], names["veth"]):
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)


def test_attach_native_on_veth_and_generic_fallback_on_bridge(
    session_dataplane: Dataplane, test_links: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    dp = session_dataplane
    try:
        with caplog.at_level(logging.WARNING, logger="spectra.xdp"):
            bridge_mode = dp.attach(test_links["nonative"])
        veth_mode = dp.attach(test_links["veth"], peer=test_links["peer"])

        assert bridge_mode == "generic"
        assert "falling back to generic mode" in caplog.text
        assert veth_mode == "native"
        assert loader.attached_mode(test_links["peer"]) == "native"
        assert test_links["veth"] in dp.tx_ports.ports()
    finally:
        for role in ("nonative", "veth", "peer"):
            dp.detach(test_links[role])
    assert all(loader.attached_mode(index) is None for index in test_links.values())
