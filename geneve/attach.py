"""Where the GWLB decap program can run on an interface, and the tc (clsact) hooks.

Native XDP is preferred.  It is not possible when the driver's native-XDP MTU limit
is below the interface MTU (ENA: 3498 bytes, while GWLB-facing ENIs run at 8500+;
https://github.com/amzn/amzn-drivers/blob/master/kernel/linux/ena/ENA_Linux_Best_Practices.rst),
or when frames exceed one page and would need an ``xdp.frags`` (multi-buffer) program,
which bcc cannot load.  :func:`plan` says which hook to use and why; the caller reports
it (``Gwlb.attach`` returns it, the agent puts it in ``status.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("spectra.geneve")

Hook = Literal["native", "generic", "tc"]
# What the configuration asks for: auto (native XDP, else generic, else tc when the MTU
# rules XDP out), xdp (native or generic, never tc), or tc (always tc ingress).
DecapHook = Literal["auto", "xdp", "tc"]
DECAP_HOOKS: tuple[DecapHook, ...] = ("auto", "xdp", "tc")

# Largest MTU each driver accepts with a native (single-buffer) XDP program attached.
NATIVE_XDP_MTU_LIMIT: dict[str, int] = {"ena": 3498}
# A single-buffer XDP frame is one page minus headroom and skb_shared_info.
SINGLE_BUFFER_MTU = 3520
TC_EGRESS_PARENT = 0xFFFFFFF3  # clsact egress (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS))
TC_INGRESS_PARENT = 0xFFFFFFF2
TC_PRIO = 1  # our filters' fixed priority (pref) at either clsact hook


@dataclass(frozen=True, slots=True)
class AttachPlan:
    """The hook decap should use on an interface and the reason."""

    ifname: str
    mtu: int
    driver: str
    hook: Hook
    reason: str

    @property
    def tc_fallback_needed(self) -> bool:
        return self.hook == "tc"


def plan(
    ifname: str,
    mtu: int,
    driver: str,
    native_ok: bool | None = None,
    requested: DecapHook = "auto",
) -> AttachPlan:
    """Decide the hook from the configuration, the MTU, the driver and (when tried)
    whether a native attach succeeded.  Pure: unit-tested without an interface."""
    if requested == "tc":
        return AttachPlan(
            ifname, mtu, driver, "tc", "tc ingress forced by configuration (decap_hook: tc)"
        )
    limit = NATIVE_XDP_MTU_LIMIT.get(driver)
    if limit is not None and mtu > limit:
        return AttachPlan(
            ifname,
            mtu,
            driver,
            "tc",
            f"{driver} native XDP supports MTU <= {limit}, {ifname} has {mtu}: "
            "decap must run at tc ingress (or lower the MTU)",
        )
    if mtu > SINGLE_BUFFER_MTU and driver != "lo":
        return AttachPlan(
            ifname,
            mtu,
            driver,
            "tc",
            f"MTU {mtu} > {SINGLE_BUFFER_MTU} needs an xdp.frags program, which bcc cannot "
            "load: decap must run at tc ingress",
        )
    if native_ok is False:
        return AttachPlan(
            ifname,
            mtu,
            driver,
            "generic",
            f"native XDP refused on {ifname} ({driver}); generic (skb) XDP in use",
        )
    return AttachPlan(ifname, mtu, driver, "native", "native XDP")


def interface_facts(ifname: str) -> tuple[int, str]:
    """(MTU, driver) of an interface in this process's netns, over netlink (sysfs
    belongs to the mount namespace and may show another netns): the link kind for
    virtual devices (veth, ...), else the driver ``ethtool -i`` reports."""
    import subprocess

    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link("get", ifname=ifname)
        mtu = int(links[0].get_attr("IFLA_MTU"))
        info = links[0].get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind:
        return mtu, str(kind)
    if ifname == "lo":
        return mtu, "lo"
    proc = subprocess.run(["ethtool", "-i", ifname], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("driver:"):
            return mtu, line.split(":", 1)[1].strip()
    return mtu, "unknown"


def tc_attach(ifindex: int, prog_fd: int, name: str, parent: int = TC_EGRESS_PARENT) -> None:
    """Add a clsact qdisc (if missing) and put a direct-action bpf filter at ``parent``
    with a fixed priority and handle, so a re-attach (a restarted agent) replaces ours
    in place: no window without a filter, and never two (without a priority the
    kernel picks a new one each time and the filters stack up).  A filter named
    ``name`` at another priority (left by an older build) is removed afterwards."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", index=ifindex)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: already there
                raise
        ipr.tc(
            "replace-filter",
            "bpf",
            index=ifindex,
            handle=1,
            fd=prog_fd,
            name=name,
            parent=parent,
            prio=TC_PRIO,
            classid=1,
            direct_action=True,
        )
        for prio in _stale_priorities(ipr, ifindex, parent, name):
            ipr.tc("del-filter", "bpf", index=ifindex, parent=parent, prio=prio)
    log.info("attached tc program %s (fd %d) to ifindex %d", name, prog_fd, ifindex)


def _stale_priorities(ipr: Any, ifindex: int, parent: int, name: str) -> set[int]:
    stale = set()
    for msg in ipr.get_filters(index=ifindex, parent=parent):
        options, prio = msg.get_attr("TCA_OPTIONS"), msg["info"] >> 16
        if msg.get_attr("TCA_KIND") != "bpf" or prio == TC_PRIO or options is None:
            continue
        if str(options.get_attr("TCA_BPF_NAME") or "").startswith(name):
            stale.add(prio)
    return stale


def tc_detach_filter(ifindex: int, parent: int) -> None:
    """Remove our filter at ``parent`` (handle 1); no-op if absent."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.tc(
                "del-filter",
                "bpf",
                index=ifindex,
                handle=1,
                parent=parent,
                prio=TC_PRIO,
                classid=1,
            )
        except NetlinkError as exc:
            if exc.code not in (2, 22):  # ENOENT / EINVAL: nothing attached
                raise


def tc_filter_present(ifindex: int, parent: int) -> bool:
    """Whether a bpf filter sits at ``parent`` (clsact ingress or egress)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            filters = ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError:
            return False
    return any(f.get_attr("TCA_KIND") == "bpf" for f in filters)


def tc_detach(ifindex: int) -> None:
    """Remove the clsact qdisc (and with it every filter we added); no-op if absent."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.tc("del", "clsact", index=ifindex)
        except NetlinkError as exc:
            if exc.code not in (2, 22):  # ENOENT / EINVAL: nothing attached
                raise
