"""The appliance agent: converges one instance to the config document in the store.

Every poll interval (1 s for the local store, 5 s for SSM) the agent reads the store's
head; on a new version it validates and converges the instance through the converge
steps (:mod:`control.steps`: all steps or none). A failed apply rolls back to the last
known good document, is reported in the status, and is retried with backoff; an
unreachable store leaves the instance on its last known good document. Between polls
the agent runs every step's ``tick`` (every 200 ms: the XDP offloader, inspection
supervision, the nftables presence check). It writes its state to
``/run/spectra/<instance>/status.json``, which ``spectra status`` and the config API's
``/v1/status`` read.

Nothing in the data plane depends on the agent: stopping it leaves the ruleset and the
pinned, attached XDP programs forwarding.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai.logsetup import configure
from control.aws.cloudwatch import CloudWatchExport, ExportSettings
from control.aws.ha import HaRunner, SyncRole
from control.aws.imds import Imds
from control.config import (
    ConfigDocument,
    ConfigValidationError,
    canonical_json,
    dump_document,
    parse_document,
)
from control.steps import ConvergeError, Converger, KernelHost, StepContext, build_steps
from control.steps.base import OffloaderKind
from control.steps.conntrack_sync import ConntrackSyncStep
from control.steps.haproxy import HaproxyStep
from control.steps.lb import LoadBalancerStep
from control.steps.squid import SquidStep
from control.steps.traffic_logs import TrafficLogsStep
from control.steps.xdp import XdpStep
from control.store import ConfigStore, CorruptRevision, StoreError, VersionNotFound
from control.store.factory import POLL_SECONDS, open_store
from xdp.histogram import Histogram

if TYPE_CHECKING:
    from control.aws import SectionSessions

log = logging.getLogger("spectra.control")

RUN_ROOT = Path("/run/spectra")
LOG_ROOT = Path("/var/log/spectra")
UNRENDERED_SECTIONS: tuple[str, ...] = ()  # every section has its step now
LAST_GOOD = "last-good.json"  # the applied document, for a restart with the store away
IDENTITY = "identity.json"  # the instance identity IMDS gave, for a fast restart


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How this agent runs; what it converges to comes from the store."""

    instance: str
    store_url: str = "local"
    poll_seconds: float | None = None  # default: by store kind (local 1 s, ssm 5 s)
    offload_seconds: float = 0.2
    flow_table_size: int = 262144
    idle_seconds: float = 300.0
    offloader: OffloaderKind = "events"
    aws: bool = False  # on EC2: IMDS, leader lease, takeover (control.aws.ha)
    imds_endpoint: str = "http://169.254.169.254"
    availability_zone: str | None = None  # overrides the instance's (user data "az")
    # apply the document's logging section to this process (and export it to the
    # processes it spawns); off in tests, which share one process's logging
    manage_logging: bool = False
    verbose: bool = False  # debug whatever logging.level says

    @property
    def poll(self) -> float:
        if self.poll_seconds is not None:
            return self.poll_seconds
        return POLL_SECONDS.get(self.store_url.partition(":")[0], 1.0)


@dataclass(slots=True)
class AgentState:
    instance: str
    pid: int
    hostname: str
    store: str
    data_plane: str = "kernel"
    desired_version: int = 0
    applied_version: int = 0
    converged: bool = False
    applied_at: float | None = None
    last_error: str | None = None
    store_error: str | None = None
    outside_addresses: list[str] = field(default_factory=list)
    applies: int = 0
    xdp_modes: dict[str, str] = field(default_factory=dict)
    # role (inside / outside) -> interface name, and the network namespace (its inode)
    # they are in: a status reader in the same namespace adds their link counters
    interfaces: dict[str, str] = field(default_factory=dict)
    netns: int = 0
    offload: dict[str, Any] = field(default_factory=dict)
    not_yet_rendered: list[str] = field(default_factory=list)
    inspection: dict[str, Any] = field(default_factory=dict)
    gwlb: dict[str, Any] = field(default_factory=dict)
    aws: dict[str, Any] = field(default_factory=dict)
    conntrack_sync: dict[str, Any] = field(default_factory=dict)
    conntrack: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)
    traffic_logs: dict[str, Any] = field(default_factory=dict)
    load_balancer: dict[str, Any] = field(default_factory=dict)
    apply_seconds: dict[str, Any] = field(default_factory=dict)  # histogram, /metrics
    cloudwatch: dict[str, Any] = field(default_factory=dict)  # the metrics export
    # document field -> why its section is not in effect (the rest converged)
    section_errors: dict[str, str] = field(default_factory=dict)


def netns_inode() -> int:
    """The inode of this process's network namespace (0: unknown)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def run_dir(instance: str) -> Path:
    return RUN_ROOT / instance


def read_state(instance: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((run_dir(instance) / "status.json").read_text())
    except FileNotFoundError:
        return None
    return data


class Agent:
    """Polls the store and converges the instance, forever."""

    def __init__(self, settings: AgentSettings, store: ConfigStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store_url)
        self.state = AgentState(
            settings.instance, os.getpid(), socket.gethostname(), settings.store_url
        )
        context = StepContext(
            settings.instance,
            run_dir(settings.instance),
            LOG_ROOT / settings.instance,
            settings.flow_table_size,
            settings.idle_seconds,
            settings.offloader,
        )
        self.host = KernelHost()
        self.host.availability_zone = settings.availability_zone
        self.converger = Converger(build_steps(context), self.host)
        self.aws = self._aws_runner() if settings.aws else None
        # the operational-role session factory of the converge steps (and, through
        # control.cli, of the in-process AI gateway's Bedrock provider); None without --aws
        self.aws_sessions: SectionSessions | None = None
        if self.aws is not None:
            self._hand_aws_clients(self.aws)
        self._stopping = threading.Event()
        self._stop = False
        self._wake = threading.Event()
        self._failed_version = 0
        self._retry_at = 0.0
        self._backoff = settings.poll
        self._apply_latency = Histogram()
        self._logging: tuple[str, str] = ("", "")
        self.cloudwatch = CloudWatchExport(self._own_status, self._cloudwatch_client)

    def _aws_runner(self) -> HaRunner:
        return HaRunner(
            Imds(self.settings.imds_endpoint),
            lambda: self.state.converged,
            lambda: next((s for s in self.converger.steps if isinstance(s, SyncRole)), None),
            zone=self.settings.availability_zone,
            cache=run_dir(self.settings.instance) / IDENTITY,
        )

    def _hand_aws_clients(self, runner: HaRunner) -> None:
        """Steps that call AWS get their clients from one session factory per ``aws``
        section (the operational role; the instance's region from IMDS): the TLS
        step's ACM exports; the load balancer's target groups come through the HA side's
        factory."""
        from control.aws import SectionSessions

        sessions = self.aws_sessions = SectionSessions(lambda: runner.identity)
        for step in self.converger.steps:
            if isinstance(step, HaproxyStep):
                step.acm_client = lambda section: sessions.client(section, "acm")
            elif isinstance(step, LoadBalancerStep):  # ELBv2 target groups
                step.aws_client = runner.client
            elif isinstance(step, TrafficLogsStep | SquidStep):  # logs to CloudWatch Logs, S3
                step.aws_client = sessions.client

    def _start_aws(self) -> None:
        """Who and where this instance is, then the HA loop from the store's current
        document, before the first converge: a restarted agent resumes its lease while
        the pinned data plane forwards, instead of letting it run out."""
        assert self.aws is not None
        identity = self.aws.identify(self._stopping)
        self.host.availability_zone = identity.availability_zone if identity else None
        # the document the pinned data plane runs, when this is a restart: no network
        # call before the lease is resumed (the store may be slow or away); the first
        # poll applies the store's head and rebuilds the HA side if it differs
        doc = self._last_good()
        if doc is None:
            try:
                head = self.store.head()
                doc = self.store.get(head) if head else None
            except (StoreError, ConfigValidationError) as exc:
                self.state.store_error = str(exc)
                log.error("AWS high availability waits for a readable document: %s", exc)
        if doc is not None:
            self.aws.configure(doc)

    def _remember(self, doc: ConfigDocument) -> None:
        """Keep the applied document (secrets too: mode 0600) for :meth:`_start_aws` of
        a restarted agent: its lease is resumed from it at once, whether the store
        answers or not, instead of running out while the pinned data plane forwards."""
        directory = run_dir(self.settings.instance)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{LAST_GOOD}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(canonical_json(dump_document(doc, reveal_secrets=True)))
        tmp.replace(directory / LAST_GOOD)

    def _last_good(self) -> ConfigDocument | None:
        path = run_dir(self.settings.instance) / LAST_GOOD
        try:
            return parse_document(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, ConfigValidationError) as exc:
            log.error("%s is unusable: %s", path, exc)
            return None

    def poll_once(self) -> None:
        """Read the store's head; converge when it moved, or re-check the live state."""
        try:
            head = self.store.head()
            self.state.store_error = None
        except StoreError as exc:
            self._unreachable(exc)
            return
        self.state.desired_version = head
        if head == 0:
            self.state.last_error = "the config store is empty: write a document (spectra config)"
            return
        if head == self.state.applied_version:
            return
        if head == self._failed_version and time.monotonic() < self._retry_at:
            return
        self._apply(head)

    def _apply(self, version: int) -> None:
        try:
            doc = self.store.get(version)
        except (VersionNotFound, CorruptRevision) as exc:
            self._failed(version, str(exc))
            return
        except StoreError as exc:  # unreachable between head and get: not a bad version
            self._unreachable(exc)
            return
        started = time.monotonic()
        try:
            plan = self.converger.converge(doc)
        except (ConvergeError, ConfigValidationError) as exc:
            self._failed(version, str(exc))
            return
        except Exception as exc:  # a renderer's bug: this version fails, the agent runs on
            log.exception("rendering config version %d failed", version)
            self._failed(version, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._apply_latency.observe(time.monotonic() - started)
            self.state.apply_seconds = self._apply_latency.as_dict()
        self.state.applied_version = version
        self.state.converged = True
        self.state.last_error = None
        self.state.applied_at = time.time()
        self.state.applies += 1
        self.state.data_plane = doc.interfaces.data_plane
        self.state.outside_addresses = list(plan.outside_addresses)
        self.state.xdp_modes = self._xdp_modes()
        self.state.interfaces = {"inside": doc.interfaces.inside, "outside": doc.interfaces.outside}
        self.state.netns = netns_inode()
        self.state.not_yet_rendered = _unrendered(doc)
        self._failed_version, self._backoff = 0, self.settings.poll
        self._apply_logging(doc)
        self._apply_metrics(doc)
        self._check_log_shipping(doc)
        log.info("converged %s to config version %d", self.settings.instance, version)
        if self.aws is not None:
            self._remember(doc)
            self.aws.configure(doc)

    def _apply_logging(self, doc: ConfigDocument) -> None:
        """``logging.level`` and ``logging.format`` for this process and its children."""
        if not self.settings.manage_logging:
            return
        level = "debug" if self.settings.verbose else doc.logging.level
        if (level, doc.logging.format) != self._logging:
            configure(level, doc.logging.format, export=True)
            self._logging = (level, doc.logging.format)

    def _apply_metrics(self, doc: ConfigDocument) -> None:
        """``metrics.cloudwatch``: publish under ``metrics.cloudwatch_namespace`` through
        the ``aws`` section's session factory; without it (no ``--aws``) the field is
        reported in ``section_errors`` and the rest of the document stays applied."""
        wanted = doc.metrics.cloudwatch
        if wanted and self.aws is None:
            self.state.section_errors["metrics.cloudwatch"] = (
                "needs the agent on AWS (spectra run --aws): the CloudWatch client comes "
                "from the aws section's operational role"
            )
            wanted = False
        else:
            self.state.section_errors.pop("metrics.cloudwatch", None)
        if not wanted or self.aws is None:
            self.cloudwatch.configure(None)
            return
        identity = self.aws.identity  # on EC2: the instance ID names the series
        name = identity.instance_id if identity is not None else self.settings.instance
        self.cloudwatch.configure(
            ExportSettings(
                doc.metrics.cloudwatch_namespace,
                doc.interfaces.inside,
                doc.interfaces.outside,
                (("Gateway", name),),
                doc.ai.state.resolved_path(doc.ai.audit) if doc.ai.routes else None,
            )
        )

    def _check_log_shipping(self, doc: ConfigDocument) -> None:
        """Flow/firewall/proxy access log shipping needs the aws section's operational role: without
        ``--aws`` each shipping field set is reported in ``section_errors`` (the logs
        are still written to their local files)."""
        shipped = [
            (f"logging.{n}", getattr(doc.logging, n)) for n in ("flow_logs", "firewall_logs")
        ]
        shipped.append(("proxy.access_log", doc.proxy.access_log))
        for name, logs in shipped:
            for key in ("cloudwatch_log_group", "s3_bucket"):
                path = f"{name}.{key}"
                enabled = logs.enabled and (name != "proxy.access_log" or doc.proxy.enabled)
                if self.aws is None and enabled and getattr(logs, key):
                    self.state.section_errors[path] = (
                        "needs the agent on AWS (spectra run --aws): shipping uses the aws "
                        "section's operational role; records stay in the local file"
                    )
                else:
                    self.state.section_errors.pop(path, None)

    def _own_status(self) -> dict[str, Any] | None:
        from control.status import instance_status  # it imports this module

        return instance_status(self.settings.instance)

    def _cloudwatch_client(self) -> Any:
        sessions = self.aws.sessions if self.aws is not None else None
        if sessions is None:
            raise OSError("no AWS session factory yet (the aws section is not configured)")
        return sessions.client("cloudwatch")

    def _unreachable(self, exc: StoreError) -> None:
        """The store cannot be read: nothing changes on the instance (the last applied
        document keeps running, the HA loop keeps its lease); retried every poll."""
        self.state.store_error = str(exc)
        log.error("config store unreachable, staying on version %d: %s",
                  self.state.applied_version, exc)  # fmt: skip

    def _failed(self, version: int, error: str) -> None:
        self.state.converged = False
        self.state.last_error = f"version {version}: {error}"
        if version == self._failed_version:
            self._backoff = min(self._backoff * 2, 30.0)
        else:
            self._failed_version, self._backoff = version, self.settings.poll
        self._retry_at = time.monotonic() + self._backoff
        log.error("config version %d not applied (retry in %.0fs): %s",
                  version, self._backoff, error)  # fmt: skip

    def _xdp_modes(self) -> dict[str, str]:
        return next((s.modes for s in self.converger.steps if isinstance(s, XdpStep)), {})

    @property
    def conntrack_sync(self) -> ConntrackSyncStep:
        """The conntrack-sync step, whose role API the leader lease drives."""
        return next(s for s in self.converger.steps if isinstance(s, ConntrackSyncStep))

    def tick(self) -> None:
        """Every step's periodic work; its status goes into the state file."""
        status = self.converger.tick()
        self.state.offload = status.get("xdp", {})
        self.state.inspection = status.get("inspection", {})
        self.state.gwlb = status.get("gwlb", {})
        if self.aws is not None:
            self.state.aws = self.aws.status()
        self.state.conntrack_sync = status.get("conntrack_sync", {})
        self.state.conntrack = status.get("sysctl", {})
        self.state.proxy = status.get("proxy", {})
        self.state.tls = status.get("tls", {})
        self.state.traffic_logs = status.get("traffic_logs", {})
        self.state.load_balancer = status.get("load_balancer", {})
        self.state.cloudwatch = self.cloudwatch.status()

    def cycle(self) -> None:
        """One poll, tick and state write. Whatever one of them raises is logged and
        reported in the status (``last_error``), never raised: the agent keeps the
        instance on its last good document and retries, it does not exit."""
        self._guarded("poll", self.poll_once)
        self._guarded("tick", self.tick)
        self._guarded("state", self.write_state)

    def _guarded(self, what: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # one section's bug must not stop the agent
            log.exception("agent %s failed", what)
            self.state.converged = self.state.converged and what != "poll"
            self.state.last_error = f"{what}: {type(exc).__name__}: {exc}"

    def write_state(self) -> None:
        directory = run_dir(self.settings.instance)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "status.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(directory / "status.json")

    def stop(self, *_: object) -> None:
        self._stop = True
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Poll now (the local config API just committed a write); thread-safe."""
        self._wake.set()

    def run(self) -> None:
        """Poll and converge until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            if self.aws is not None:
                self._start_aws()
            self.cloudwatch.start()
            while not self._stop:
                self.cycle()
                deadline = time.monotonic() + self.settings.poll
                while not self._stop and time.monotonic() < deadline:
                    self._guarded("tick", self.tick)
                    if self._wake.wait(self.settings.offload_seconds):
                        self._wake.clear()
                        break
        finally:
            self.cloudwatch.stop()
            if self.aws is not None:
                self.aws.stop()
            self.converger.close()
            self.store.close()
        log.info("agent %s stopped; data plane left in place", self.settings.instance)


def _unrendered(doc: ConfigDocument) -> list[str]:
    """Enabled sections that no converge step renders (reported, not hidden)."""
    return [s for s in UNRENDERED_SECTIONS if getattr(getattr(doc, s), "enabled", False)]


def bootstrap_document(inside_if: str, outside_if: str) -> dict[str, Any]:
    """The document an empty store gets on first start: translate inside -> outside."""
    return {"interfaces": {"inside": inside_if, "outside": outside_if}}
