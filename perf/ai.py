"""AI-gateway benchmark (AI-gateway issue item 11): added latency and sustained rate of
the Cloud Spectra AI gateway against a bare aiohttp pass-through proxy and LiteLLM's
proxy, all in front of the same fake OpenAI-compatible upstream, in one run.

``python -m perf ai --json FILE [--quick]`` (:func:`run`), or ``python -m perf.ai`` with
``--no-litellm`` / ``--no-pin`` (:func:`measure`):

* systems, each its own process: ``direct`` (the fake upstream, ``python -m
  tests.fakes`` — the baseline), ``bare_proxy`` (:func:`create_bare_proxy`, ~30 lines),
  ``gateway`` (``python -m ai --config``: auth, budgets, metering, audit log and the
  on-disk exact cache on; every prompt carries a counter, so the cache-miss path) and
  ``litellm`` (``litellm[proxy]`` in its own venv under ``/var/cache/spectra-perf``, two
  workers, no database, master key set); non-streaming and streaming chat completions;
* ``gateway_redis``: the same gateway with ``state.backend: redis`` (budgets, rate
  windows and the exact cache in a ``redis-server`` started here, on the generator's
  CPU like the fake upstream) and one worker, so its rows compare the two backends;
* an open-loop fixed-rate ladder (:mod:`perf.loadgen`), rates interleaved round-robin
  across the systems; a system leaves the ladder at its first failed step (an error,
  or p99 >= 100 ms measured from the scheduled send time); then the two gateway
  backends' sustained rates are bisected between their last passed and first failed
  steps to within ``Settings.refine`` (5 %), so their ratio is not the ladder's step;
  before the ladder, ``Settings.redis_rounds`` paired rounds (local, then Redis) at 200
  rps per mode, whose median p99 difference is the Redis p99 goal's figure;
* cache hits: the gateway's exact cache, and its semantic cache (a second gateway
  with ``semantic_cache`` on; MiniLM on onnxruntime, offline), checked at the fake's
  request counter to have called no upstream.

Pinning (two cores): the load generator and the fake upstream on the first CPU, the
system under test on the second, so every proxy gets the same single core (LiteLLM's
two workers share it). Figures: added latency = the system's percentile minus the
direct baseline's at the same rate and mode; ratios against LiteLLM, the bare proxy and
the goals of the issue, all from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from perf import report
from perf.loadgen import P99_LIMIT_MS, Step, http_sender, run_step, summarize, sustained_rate
from perf.report import Result

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("SPECTRA_PERF_CACHE", "/var/cache/spectra-perf"))
LITELLM_REQUIREMENT = "litellm[proxy]"
MODEL = "gpt-4o-mini"
KEY_SECRET, GATEWAY_KEY, LITELLM_KEY = "perf-secret", "sk-spectra-perf", "sk-perf-master"
MODES = ("nonstream", "stream")
DIRECT, BARE, GATEWAY, LITELLM, GATEWAY_SEM, GATEWAY_REDIS = (
    "direct",
    "bare_proxy",
    "gateway",
    "litellm",
    "gateway_semantic",
    "gateway_redis",
)
SYSTEMS = (DIRECT, BARE, GATEWAY, GATEWAY_REDIS, LITELLM)
# The shared-state goals (issue #23 point 7): at REDIS_GOAL_RATE the Redis backend's
# added p99 at most the local backend's + REDIS_P99_SLACK_MS; its sustained rate at
# least REDIS_RATE_FACTOR x the local one's, both on one worker.
REDIS_GOAL_RATE, REDIS_P99_SLACK_MS, REDIS_RATE_FACTOR = 200, 0.5, 0.9
# Semantic pairs: stored text -> paraphrase looked up (pass the shipped threshold/guards).
PARAPHRASES = (
    ("How do I reset my password?", "How can I reset my password?"),
    ("Explain how a hash table works.", "Explain how hash tables work."),
    ("What is the capital of France?", "Which city is the capital of France?"),
)
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """The ladder and step sizes; :meth:`quick` finishes within two minutes here."""

    # Steps close enough that "the highest rate sustained" is within ~20 % of the real
    # limit where the gateway and the bare proxy stop (a ratio of two such rates is
    # quantized by the steps), and past the bare proxy's limit so it is found, not bounded.
    rates: tuple[int, ...] = (10, 50, 100, 200, 350, 500, 700, 850, 1000, 1200, 1400, 1700, 2000)
    seconds: float = 5.0
    min_requests: int = 100
    timeout_s: float = 5.0
    warmup: int = 30
    cache_rate: int = 50
    cache_requests: int = 200
    refine: float = 0.05
    """After the ladder, the two gateway backends' sustained rates are bisected between
    their last passed and first failed steps until the gap is at most this fraction of
    the rate passed (the ladder's steps are 15-20 % apart; the Redis goal is a 0.9x
    ratio, so a ratio of two ladder steps could not tell 0.9x from 0.8x)."""
    redis_rounds: int = 5
    """Paired rounds (local, then Redis) at REDIS_GOAL_RATE before the ladder: the Redis
    p99 goal is the median of the rounds' differences, since one step's p99 (its 10th
    worst request of 1,000) moves by +-2 ms with a hiccup of this shared host."""
    goal_rate: int = 50
    goal_requests: int = 1_000
    """Requests of the goal-rate step: its p99 is the 10th-worst of them, not the 3rd of
    250 (the other steps decide pass or fail; this one is compared across systems)."""

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rates=(10, 50, 200, 500, 1000),
            seconds=2.0,
            min_requests=40,
            timeout_s=3.0,
            warmup=15,
            cache_requests=100,
            goal_requests=200,
            redis_rounds=3,
        )

    def count(self, rate: int) -> int:
        floor = self.goal_requests if rate == self.goal_rate else self.min_requests
        return max(floor, round(rate * self.seconds))


# --- the bare pass-through proxy --------------------------------------------------------

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].post(
        request.app[UPSTREAM] + request.path_qs, data=body, headers=headers
    ) as up:
        resp = web.StreamResponse(
            status=up.status,
            headers={"Content-Type": up.headers.get("Content-Type", "application/octet-stream")},
        )
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def create_bare_proxy(upstream: str) -> web.Application:
    """Forwards every POST body to ``upstream`` and streams the response back: the
    floor of what any Python HTTP proxy costs."""

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", _forward)
    return app


# --- processes --------------------------------------------------------------------------


class StartFailed(RuntimeError):
    """A system under test did not come up; the message says which and why."""


@dataclass
class Service:
    """A process group started by the benchmark, and where it answers."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(generator + fake CPUs, system-under-test CPUs); None where not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def spawn(
    name: str,
    argv: list[str],
    url: str,
    logdir: Path,
    cpus: set[int] | None,
    env: dict[str, str] | None = None,
    stdout_pipe: bool = False,
    unset: Sequence[str] = (),
    cwd: Path = ROOT,
) -> Service:
    log = logdir / f"{name}.log"
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            preexec_fn=pin,
        )
    return Service(name, url, proc, log)


def wait_ready(service: Service, probe: str, timeout_s: float) -> None:
    """Poll ``GET probe`` until any answer below 500 (401 and 404 mean it listens)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise StartFailed(
                f"{service.name} exited with status {service.proc.returncode}: {service.tail()}"
            )
        try:
            with urllib.request.urlopen(probe, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise StartFailed(
        f"{service.name} not ready at {probe} after {timeout_s:.0f} s: {service.tail()}"
    )


def start_fake(logdir: Path, cpus: set[int] | None) -> Service:
    svc = spawn("fake", [sys.executable, "-m", "tests.fakes"], "", logdir, cpus, stdout_pipe=True)
    assert svc.proc.stdout is not None
    line = svc.proc.stdout.readline()
    try:
        svc.url = json.loads(line)["openai"]
    except (ValueError, KeyError):
        svc.stop()
        raise StartFailed(f"fake upstream printed {line!r}: {svc.tail()}") from None
    return svc


def gateway_config(
    upstream: str, tmp: Path, port: int, *, semantic: bool, redis_port: int | None = None
) -> dict[str, Any]:
    """Auth (one key), budgets, metering, audit and the on-disk exact cache on; with
    ``redis_port``, budgets, rate windows and the exact cache in that Redis."""
    from ai.keys import hash_key

    (tmp / "key-secret").write_text(KEY_SECRET + "\n")
    name = "gateway-sem" if semantic else "gateway" if redis_port is None else "gateway-redis"
    state = (
        {}
        if redis_port is None
        else {
            "backend": "redis",
            "redis": {"host": "127.0.0.1", "port": redis_port},
        }
    )
    return {
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "key_secret": {"file": str(tmp / "key-secret")},
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": upstream + "/v1",
                "api_key": {"env": "PERF_UPSTREAM_KEY"},
            }
        },
        "routes": [{"pattern": "gpt-*", "provider": "openai", "models": [MODEL]}],
        "keys": [
            {
                "id": "perf",
                "hash": hash_key(KEY_SECRET, GATEWAY_KEY),
                "tenant": "perf",
                "budget": {"max_tokens": 10**12, "requests_per_minute": 10**7},
            }
        ],
        "prices": [{"pattern": "gpt-*", "input_per_mtok": 0.15, "output_per_mtok": 0.6}],
        "exact_cache": {"path": str(tmp / f"{name}-cache.sqlite3")},
        "semantic_cache": {"settings": {}} if semantic else {},
        "audit": {"path": str(tmp / f"{name}-audit.jsonl")},
        "state": state,
    }


def start_gateway(
    upstream: str,
    tmp: Path,
    cpus: set[int] | None,
    *,
    semantic: bool,
    redis_port: int | None = None,
) -> Service:
    port = free_port()
    name = GATEWAY_SEM if semantic else GATEWAY if redis_port is None else GATEWAY_REDIS
    cfg = tmp / f"{name}.json"
    config = gateway_config(upstream, tmp, port, semantic=semantic, redis_port=redis_port)
    cfg.write_text(json.dumps(config))
    return spawn(
        name,
        [sys.executable, "-m", "ai", "--config", str(cfg), "--workers", "1"],
        f"http://127.0.0.1:{port}",
        tmp,
        cpus,
        env={"PERF_UPSTREAM_KEY": "sk-fake"},
    )


def start_redis(tmp: Path, cpus: set[int] | None) -> Service:
    """A ``redis-server`` on a free loopback port, no persistence; StartFailed if the
    package is not installed (``make deps``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartFailed("redis-server is not installed (make deps installs it)")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp)]
    argv += ["--save", "", "--appendonly", "no"]
    return spawn("redis", argv, f"redis://127.0.0.1:{port}", tmp, cpus)


def redis_port(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def wait_listening(service: Service, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise StartFailed(f"{service.name} exited: {service.tail()}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", redis_port(service)), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise StartFailed(f"{service.name} did not listen in {timeout_s:.0f} s")


def start_bare(upstream: str, tmp: Path, cpus: set[int] | None) -> Service:
    port = free_port()
    return spawn(
        BARE,
        [
            sys.executable,
            "-m",
            "perf.ai",
            "bare-proxy",
            "--upstream",
            upstream,
            "--port",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        tmp,
        cpus,
    )


def ensure_litellm(venv: Path, progress: Progress) -> Path:
    """The ``litellm`` entry point of ``venv``, installing ``litellm[proxy]`` there
    from PyPI when it is missing; :class:`StartFailed` with pip's output otherwise."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    progress(f"installing {LITELLM_REQUIREMENT} into {venv} (not counted in the run time)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    for argv in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", LITELLM_REQUIREMENT],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise StartFailed(f"`{' '.join(argv)}` failed: {done.stderr.strip()[-400:]}")
    if not exe.exists():
        raise StartFailed(f"{LITELLM_REQUIREMENT} installed no {exe}")
    return exe


def litellm_config(upstream: str) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-fake\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )


def start_litellm(exe: Path, upstream: str, tmp: Path, cpus: set[int] | None) -> Service:
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(litellm_config(upstream))
    # No database (DATABASE_URL unset); the bundled model cost map, as nothing may
    # leave the machine. uvicorn kills a worker that misses its health ping for 5 s
    # (the default), which happens on one busy core during boot and under overload.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return spawn(
        LITELLM,
        [
            str(exe),
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--num_workers",
            "2",
            "--timeout_worker_healthcheck",
            "120",
        ],
        f"http://127.0.0.1:{port}",
        tmp,
        cpus,
        env,
        unset=("DATABASE_URL",),
        cwd=tmp,
    )  # not the repo: its packages shadow


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU of every live process in the process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5, pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def settle(services: Sequence[Service], max_wait_s: float = 15.0) -> None:
    """Wait until the processes stop burning CPU (a saturated server drains its backlog
    after the client gave up), so the next step starts on an idle core."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        before = sum(group_cpu_seconds(s.proc.pid) for s in services)
        await asyncio.sleep(0.3)
        if sum(group_cpu_seconds(s.proc.pid) for s in services) - before < 0.06:
            return


# --- the measurement ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    system: str
    url: str
    headers: dict[str, str]
    service: Service


@dataclass(frozen=True, slots=True)
class CacheStep:
    """A cache measurement: the step and how many upstream calls it caused."""

    kind: str  # exact_hit | semantic_hit | exact_miss | semantic_miss
    step: Step
    upstream_calls: int


@dataclass
class Outcome:
    """Everything measured in one run (the input of :func:`build_results`)."""

    steps: list[Step] = field(default_factory=list)
    cache: list[CacheStep] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    harness_limit: dict[str, int] = field(default_factory=dict)  # mode -> failing rate
    retried: list[Step] = field(default_factory=list)  # failed first attempts
    paired: list[Step] = field(default_factory=list)  # the Redis goal's rounds


def chat_body(text: str, *, stream: bool, system: str | None = None) -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return json.dumps(
        {"model": MODEL, "messages": messages, "max_tokens": 64, "stream": stream}
    ).encode()


def unique_bodies(tag: str, count: int, stream: bool) -> list[bytes]:
    """Every prompt different (a counter in it): the gateway's cache-miss path."""
    return [
        chat_body(f"benchmark {tag} request {i} about fixed rate load", stream=stream)
        for i in range(count)
    ]


class Bench:
    def __init__(self, settings: Settings, progress: Progress, fake: Service) -> None:
        self.settings, self.progress, self.fake = settings, progress, fake
        self.run_id = uuid.uuid4().hex[:8]
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, system: str) -> aiohttp.ClientSession:
        if system not in self.sessions:
            self.sessions[system] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            )
        return self.sessions[system]

    async def close(self) -> None:
        for s in self.sessions.values():
            await s.close()

    async def step(
        self,
        target: Target,
        mode: str,
        rate: int,
        bodies: Sequence[bytes],
        label: str | None = None,
    ) -> Step:
        send = http_sender(
            self.session(target.system),
            target.url + "/v1/chat/completions",
            bodies,
            {"Content-Type": "application/json", **target.headers},
            stream=mode == "stream",
            timeout_s=self.settings.timeout_s,
        )
        samples = await run_step(send, rate, len(bodies))
        await settle([target.service, self.fake])
        return summarize(label or target.system, mode, rate, samples)

    async def warm_up(self, target: Target) -> None:
        """Connections, lazy imports and model loads; not recorded."""
        for mode in MODES:
            tag = f"{self.run_id}-warm-{target.system}-{mode}"
            bodies = unique_bodies(tag, self.settings.warmup, mode == "stream")
            await self.step(target, mode, 30, bodies)

    async def sweep(self, targets: Sequence[Target], out: Outcome) -> None:
        s = self.settings
        alive = {(t.system, m) for t in targets for m in MODES}
        for rate in s.rates:
            for mode in MODES:
                for t in targets:
                    if (t.system, mode) not in alive:
                        continue
                    step = await self.ladder_step(t, mode, rate, out)
                    if not step.passed:
                        alive.discard((t.system, mode))
                        if t.system == DIRECT:  # beyond what the harness itself holds
                            out.harness_limit[mode] = rate
                            alive -= {(x.system, mode) for x in targets}

    async def ladder_step(self, t: Target, mode: str, rate: int, out: Outcome) -> Step:
        """One step, once more if it failed (the machine may be shared); recorded."""
        count, stream = self.settings.count(rate), mode == "stream"
        tag = f"{self.run_id}-{t.system}-{mode}-{rate}"
        step = await self.step(t, mode, rate, unique_bodies(tag, count, stream))
        if not step.passed:
            out.retried.append(step)
            step = await self.step(t, mode, rate, unique_bodies(tag + "-retry", count, stream))
        out.steps.append(step)
        self.progress(
            f"{t.system:10} {mode:9} {rate:5} rps: p50 {step.p50_ms or 0:7.1f} ms "
            f"p99 {step.p99_ms or 0:7.1f} ms errors {step.errors}"
        )
        return step

    async def refine(self, targets: Sequence[Target], out: Outcome) -> None:
        """Bisect each target's sustained rate between its last passed and first failed
        ladder steps (:attr:`Settings.refine`), the targets interleaved round by round;
        the new steps join the ladder's, so :func:`sustained` reads them like any step."""
        for mode in MODES:
            while True:
                due = [
                    (t, mid)
                    for t in targets
                    if (mid := refine_rate(out, t.system, mode, self.settings.refine))
                ]
                if not due:
                    break
                for t, mid in due:
                    await self.ladder_step(t, mode, mid, out)

    async def redis_rounds(self, local: Target, redis: Target, out: Outcome) -> None:
        """:attr:`Settings.redis_rounds` paired steps at REDIS_GOAL_RATE, per mode."""
        count = max(self.settings.goal_requests, self.settings.count(REDIS_GOAL_RATE))
        for mode in MODES:
            for i in range(self.settings.redis_rounds):
                for t in (local, redis):
                    tag = f"{self.run_id}-{t.system}-{mode}-paired-{i}"
                    bodies = unique_bodies(tag, count, mode == "stream")
                    step = await self.step(t, mode, REDIS_GOAL_RATE, bodies)
                    out.paired.append(step)
                    self.progress(
                        f"{t.system:10} {mode:9} round {i}: p99 {step.p99_ms or 0:6.2f} ms "
                        f"errors {step.errors}"
                    )

    async def upstream_calls(self) -> int:
        async with self.session(DIRECT).get(self.fake.url + "/_fake/stats") as resp:
            return int((await resp.json())["requests"])

    async def cache_pair(
        self,
        target: Target,
        kind: str,
        stored: list[bytes],
        lookups: dict[str, list[bytes]],
        out: Outcome,
    ) -> None:
        """Fill the cache at the fixed rate (the miss figure), then look up."""
        rate = self.settings.cache_rate
        before = await self.upstream_calls()
        miss = await self.step(target, "nonstream", rate, stored)
        out.cache.append(CacheStep(f"{kind}_miss", miss, await self.upstream_calls() - before))
        for mode, bodies in lookups.items():
            before = await self.upstream_calls()
            hit = await self.step(target, mode, rate, bodies)
            calls = await self.upstream_calls() - before
            out.cache.append(CacheStep(f"{kind}_hit", hit, calls))
            self.progress(
                f"{target.system:10} {kind} hit {mode:9}: p50 {hit.p50_ms or 0:.1f} "
                f"ms p99 {hit.p99_ms or 0:.1f} ms, upstream calls {calls}"
            )

    async def caches(self, gateway: Target, semantic: Target | None, out: Outcome) -> None:
        n = self.settings.cache_requests
        stored = [
            chat_body(f"cache {self.run_id} question {i}: what is a cache?", stream=False)
            for i in range(n)
        ]
        await self.cache_pair(
            gateway,
            "exact",
            stored,
            {
                "nonstream": stored,
                "stream": [
                    chat_body(f"cache {self.run_id} question {i}: what is a cache?", stream=True)
                    for i in range(n)
                ],
            },
            out,
        )
        if semantic is None:
            return
        await self.warm_up(semantic)  # the embedding model loads on first use

        def sem(i: int, which: int, stream: bool) -> bytes:
            pair = PARAPHRASES[i % len(PARAPHRASES)]
            return chat_body(
                pair[which], stream=stream, system=f"You are support assistant {self.run_id}-{i}."
            )

        await self.cache_pair(
            semantic,
            "semantic",
            [sem(i, 0, False) for i in range(n)],
            {
                "nonstream": [sem(i, 1, False) for i in range(n)],
                "stream": [sem(i, 1, True) for i in range(n)],
            },
            out,
        )


# --- results -------------------------------------------------------------------------------


def _find(steps: Sequence[Step], system: str, mode: str, rate: float) -> Step | None:
    return next((s for s in steps if (s.system, s.mode, s.rate) == (system, mode, rate)), None)


def _added(step: Step | None, base: Step | None, pct: str) -> float | None:
    if step is None or base is None:
        return None
    a, b = getattr(step, pct), getattr(base, pct)
    return None if a is None or b is None else a - b


def _step_note(step: Step, retried: Sequence[Step] = ()) -> str:
    first = _find(retried, step.system, step.mode, step.rate)
    again = "" if first is None else f"retried (1st: {_step_note(first) or 'passed'}); "
    if step.passed:
        return again.removesuffix("; ")
    if step.errors:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(step.error_kinds.items()))
        return f"{again}fails: {step.errors}/{step.count} errors ({kinds})"
    return f"{again}fails: p99 {step.p99_ms:.0f} ms >= {P99_LIMIT_MS:.0f}"


def latency_results(out: Outcome) -> list[Result]:
    """Direct latency per rate, and each system's added p50/p99 over it: the gateway's
    and the bare proxy's against LiteLLM's, LiteLLM's against the direct latency."""
    results: list[Result] = []
    for direct in (s for s in out.steps if s.system == DIRECT):
        for pct in ("p50_ms", "p99_ms"):
            results.append(
                Result(
                    f"latency_{pct}",
                    f"{DIRECT}/{direct.mode}",
                    "ms",
                    getattr(direct, pct),
                    runs=[direct.as_dict()],
                    offered_pps=int(direct.rate),
                    valid=direct.passed,
                    note=_step_note(direct, out.retried) or "the baseline of every added figure",
                )
            )
    for step in (s for s in out.steps if s.system != DIRECT):
        base = _find(out.steps, DIRECT, step.mode, step.rate)
        ref = _find(out.steps, LITELLM, step.mode, step.rate)
        for pct in ("p50_ms", "p99_ms"):
            value = _added(step, base, pct)
            if step.system == LITELLM:
                bname, bvalue = (
                    f"{DIRECT}/{step.mode} latency",
                    (getattr(base, pct) if base else None),
                )
            else:
                bname, bvalue = f"{LITELLM}/{step.mode}", _added(ref, base, pct)
            first = _find(out.retried, step.system, step.mode, step.rate)
            runs = (
                [step.as_dict()]
                + ([base.as_dict()] if base else [])
                + ([{**first.as_dict(), "retried": True}] if first else [])
            )
            results.append(
                Result(
                    f"added_{pct}",
                    f"{step.system}/{step.mode}",
                    "ms",
                    value,
                    bname,
                    bvalue,
                    runs=runs,
                    offered_pps=int(step.rate),
                    valid=step.passed and value is not None,
                    note=_step_note(step, out.retried),
                )
            )
    return results


def refine_rate(out: Outcome, system: str, mode: str, fraction: float) -> int | None:
    """The next rate to try between ``system``'s sustained rate and the lowest rate it
    failed above it (rounded to 10 rps), or None when that gap is already at most
    ``fraction`` of the sustained rate (or there is no gap: nothing failed, or the
    lowest step did, or the harness's own limit stopped it)."""
    got = sustained(out, system, mode)
    if got is None or got[1] or got[0] <= 0:
        return None
    low = got[0]
    failed = [s.rate for s in out.steps if (s.system, s.mode) == (system, mode) and s.rate > low]
    if not failed or (high := min(failed)) - low <= fraction * low:
        return None
    mid = int(round((low + high) / 20) * 10)
    return mid if low < mid < high else None


def sustained(out: Outcome, system: str, mode: str) -> tuple[float, bool] | None:
    steps = [s for s in out.steps if (s.system, s.mode) == (system, mode)]
    if not steps:
        return None
    rate, top = sustained_rate(steps)
    limit = out.harness_limit.get(mode)
    # Stopped by the harness's own limit (the direct baseline failed): a lower bound.
    return rate, top or (
        limit is not None and system != DIRECT and rate > 0 and all(s.passed for s in steps)
    )


def rate_results(out: Outcome) -> list[Result]:
    results: list[Result] = []
    for mode in MODES:
        got = {sys_: sustained(out, sys_, mode) for sys_ in SYSTEMS}
        for system, value in got.items():
            if value is None:
                continue
            rate, bound = value
            baselines = {
                GATEWAY: (LITELLM, BARE),
                GATEWAY_REDIS: (GATEWAY,),
                BARE: (LITELLM,),
                LITELLM: (BARE,),
            }.get(system, (None,))
            for b in baselines:
                bval = got.get(b) if b else None
                note = ">= (passed the top of the ladder or the harness limit)" if bound else ""
                results.append(
                    Result(
                        "sustained_rps",
                        f"{system}/{mode}",
                        "rps",
                        rate,
                        f"{b}/{mode}" if b else None,
                        bval[0] if bval else None,
                        runs=[
                            s.as_dict() for s in out.steps if (s.system, s.mode) == (system, mode)
                        ],
                        valid=rate > 0,
                        note=note,
                        lower_is_better=False,
                        extra={
                            "lower_bound": bound,
                            "criterion": (
                                f"zero errors and p99 < {P99_LIMIT_MS:.0f} ms from the schedule"
                            ),
                        },
                    )
                )
    return results


def cache_results(out: Outcome) -> list[Result]:
    """Hit (and miss) latency against the gateway's miss at the same rate and against
    the direct upstream; a hit that reached the upstream is invalid."""
    results: list[Result] = []
    for c in out.cache:
        s = c.step
        miss = _find(out.steps, GATEWAY, s.mode, s.rate)
        direct = _find(out.steps, DIRECT, s.mode, s.rate)
        hit = c.kind.endswith("_hit")
        valid = s.passed and (c.upstream_calls == 0 if hit else c.upstream_calls == s.count)
        note = _step_note(s) or (f"{c.upstream_calls} upstream calls" if not valid else "")
        for pct in ("p50_ms", "p99_ms"):
            results.append(
                Result(
                    f"{c.kind}_{pct}",
                    f"{s.system}/{s.mode}",
                    "ms",
                    getattr(s, pct),
                    f"{GATEWAY}/{s.mode} miss",
                    getattr(miss, pct) if miss else None,
                    runs=[s.as_dict()],
                    offered_pps=int(s.rate),
                    valid=valid,
                    note=note,
                    extra={
                        "upstream_calls": c.upstream_calls,
                        "direct_upstream_ms": getattr(direct, pct) if direct else None,
                    },
                )
            )
    return results


def goal_results(out: Outcome, settings: Settings) -> list[Result]:
    """The issue's goals as ratios against the goal's threshold: <= 1 (added p99) or
    >= 1 (sustained rates) is met."""
    results: list[Result] = []
    for mode in MODES:
        gw = _find(out.steps, GATEWAY, mode, settings.goal_rate)
        base = _find(out.steps, DIRECT, mode, settings.goal_rate)
        ll = _find(out.steps, LITELLM, mode, settings.goal_rate)
        value, ref = _added(gw, base, "p99_ms"), _added(ll, base, "p99_ms")
        limit = None if ref is None else 0.1 * ref
        met = value is not None and limit is not None and value <= limit
        why = (
            "LiteLLM unavailable"
            if LITELLM in out.unavailable
            else f"LiteLLM failed below {settings.goal_rate} rps"
        )
        note = ("met" if met else "NOT met") if limit is not None else f"not measurable ({why})"
        if ll is not None and not ll.passed:
            note += " (LiteLLM itself fails this step: compared with its overload)"
        results.append(
            Result(
                "goal_added_p99",
                f"{GATEWAY}/{mode}",
                "ms",
                value,
                f"0.1 x {LITELLM} added p99",
                limit,
                offered_pps=settings.goal_rate,
                valid=limit is not None,
                note=note,
            )
        )
        rates = {s: sustained(out, s, mode) for s in (GATEWAY, LITELLM, BARE)}
        mine = rates[GATEWAY]
        for other, factor in ((LITELLM, 10.0), (BARE, 0.8)):
            theirs = rates[other]
            goal = None if theirs is None or theirs[0] <= 0 else factor * theirs[0]
            ok = mine is not None and goal is not None and mine[0] >= goal
            if goal is None:
                why = "sustains no rate of the ladder" if theirs else "unavailable"
                note = f"not measurable ({other} {why})"
            elif not ok:
                note = "NOT met"
            elif theirs is not None and theirs[1]:
                # Theirs is only a lower bound: their real limit, and the goal, may be higher.
                note = f"undetermined: {other} sustained the whole ladder (>= {theirs[0]:g} rps)"
            else:
                note = "met"
            results.append(
                Result(
                    "goal_sustained_rps",
                    f"{GATEWAY}/{mode}",
                    "rps",
                    mine[0] if mine else None,
                    f"{factor:g} x {other}",
                    goal,
                    valid=goal is not None,
                    lower_is_better=False,
                    note=note,
                )
            )
    return results


def _pairs(out: Outcome, mode: str) -> list[tuple[Step | None, Step | None]]:
    """The paired rounds of ``mode``: (local, Redis) steps, in the order they ran."""
    local = [s for s in out.paired if (s.system, s.mode) == (GATEWAY, mode)]
    redis = [s for s in out.paired if (s.system, s.mode) == (GATEWAY_REDIS, mode)]
    return list(zip(local, redis, strict=True))


def redis_goal_results(out: Outcome) -> list[Result]:
    """The Redis backend against the local one, both one worker in this run: p99 at
    REDIS_GOAL_RATE at most REDIS_P99_SLACK_MS above the local one's (its added latency
    over the local one's added latency), and a sustained rate of at least
    REDIS_RATE_FACTOR x the local one's."""
    results: list[Result] = []
    if not any(s.system == GATEWAY_REDIS for s in out.steps):
        return results
    for mode in MODES:
        # added over direct, minus the local one's added: the direct baseline cancels,
        # so this is the difference of the two p99s at the same rate; the median of the
        # paired rounds' differences when they ran, else the ladder's one step
        pairs = _pairs(out, mode) or [
            (
                _find(out.steps, GATEWAY, mode, REDIS_GOAL_RATE),
                _find(out.steps, GATEWAY_REDIS, mode, REDIS_GOAL_RATE),
            )
        ]
        diffs = [d for local, redis in pairs if (d := _added(redis, local, "p99_ms")) is not None]
        mine = statistics.median(diffs) if len(diffs) == len(pairs) else None
        met = mine is not None and mine <= REDIS_P99_SLACK_MS
        results.append(
            Result(
                "goal_redis_added_p99",
                f"{GATEWAY_REDIS}/{mode}",
                "ms",
                mine,
                f"p99 over {GATEWAY}/{mode}: at most {REDIS_P99_SLACK_MS} ms",
                REDIS_P99_SLACK_MS,
                runs=[
                    {"local": lo.as_dict(), "redis": re.as_dict(), "valid": lo.passed and re.passed}
                    for lo, re in pairs
                    if lo is not None and re is not None
                ],
                offered_pps=REDIS_GOAL_RATE,
                valid=mine is not None,
                note=("met" if met else "NOT met") if mine is not None else "not measurable",
                minimum=min(diffs, default=None),
                maximum=max(diffs, default=None),
                extra={"round_differences_ms": diffs},
            )
        )
        rates = {s: sustained(out, s, mode) for s in (GATEWAY, GATEWAY_REDIS)}
        have, theirs = rates[GATEWAY_REDIS], rates[GATEWAY]
        goal = None if theirs is None or theirs[0] <= 0 else REDIS_RATE_FACTOR * theirs[0]
        ok = have is not None and goal is not None and have[0] >= goal
        note = "not measurable" if goal is None else "met" if ok else "NOT met"
        if ok and theirs is not None and theirs[1] and have is not None and not have[1]:
            note = f"undetermined: {GATEWAY} sustained the whole ladder"
        results.append(
            Result(
                "goal_redis_sustained_rps",
                f"{GATEWAY_REDIS}/{mode}",
                "rps",
                have[0] if have else None,
                f"{REDIS_RATE_FACTOR:g} x {GATEWAY}",
                goal,
                valid=goal is not None,
                lower_is_better=False,
                note=note,
            )
        )
    return results


def build_results(out: Outcome, settings: Settings) -> list[Result]:
    results = [
        Result("suite", name, "-", None, valid=False, note=f"unavailable: {why}")
        for name, why in out.unavailable.items()
    ]
    results += [
        Result(
            "harness_limit",
            f"{DIRECT}/{mode}",
            "rps",
            float(rate),
            valid=False,
            note="the direct baseline failed here; higher rates not measured",
        )
        for mode, rate in out.harness_limit.items()
    ]
    return (
        results
        + latency_results(out)
        + rate_results(out)
        + cache_results(out)
        + goal_results(out, settings)
        + redis_goal_results(out)
    )


# --- entry points --------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


async def _measure(
    settings: Settings,
    services: dict[str, Service],
    fake: Service,
    out: Outcome,
    progress: Progress,
) -> None:
    headers = {
        GATEWAY: {"Authorization": f"Bearer {GATEWAY_KEY}"},
        GATEWAY_SEM: {"Authorization": f"Bearer {GATEWAY_KEY}"},
        GATEWAY_REDIS: {"Authorization": f"Bearer {GATEWAY_KEY}"},
        LITELLM: {"Authorization": f"Bearer {LITELLM_KEY}"},
    }
    targets = {
        name: Target(name, svc.url, headers.get(name, {}), svc) for name, svc in services.items()
    }
    targets[DIRECT] = Target(DIRECT, fake.url, {}, fake)
    bench = Bench(settings, progress, fake)
    try:
        ladder = [targets[s] for s in SYSTEMS if s in targets]
        for t in ladder:
            await bench.warm_up(t)
        if GATEWAY_REDIS in targets:  # first: after the ladder's overload steps a
            # gateway's p99 at 200 rps stays 3-50x what it was before them
            await bench.redis_rounds(targets[GATEWAY], targets[GATEWAY_REDIS], out)
        await bench.sweep(ladder, out)
        await bench.refine([targets[s] for s in (GATEWAY, GATEWAY_REDIS) if s in targets], out)
        if GATEWAY in targets:
            await bench.caches(targets[GATEWAY], targets.get(GATEWAY_SEM), out)
    finally:
        await bench.close()


def measure(
    quick: bool,
    *,
    settings: Settings | None = None,
    litellm: bool = True,
    litellm_venv: Path = CACHE_DIR / "litellm-venv",
    pin: bool = True,
    progress: Progress = report.progress,
) -> list[Result]:
    """The whole benchmark."""
    settings = settings or (Settings.quick() if quick else Settings())
    gen_cpus, sut_cpus = cpu_plan() if pin else (None, None)
    out = Outcome()
    exe: Path | None = None
    if litellm:
        try:
            exe = ensure_litellm(litellm_venv, progress)
        except (StartFailed, OSError, subprocess.SubprocessError) as exc:
            out.unavailable[LITELLM] = str(exc)
    else:
        out.unavailable[LITELLM] = "skipped (--no-litellm)"
    services: dict[str, Service] = {}
    with tempfile.TemporaryDirectory(prefix="spectra-perf-ai-") as tmpdir, pinned(gen_cpus):
        tmp = Path(tmpdir)
        fake = start_fake(tmp, gen_cpus)
        redis: Service | None = None
        try:
            started = time.monotonic()
            services[BARE] = start_bare(fake.url, tmp, sut_cpus)
            services[GATEWAY] = start_gateway(fake.url, tmp, sut_cpus, semantic=False)
            try:
                redis = start_redis(tmp, gen_cpus)
                wait_listening(redis)
                services[GATEWAY_REDIS] = start_gateway(
                    fake.url, tmp, sut_cpus, semantic=False, redis_port=redis_port(redis)
                )
            except StartFailed as exc:
                out.unavailable[GATEWAY_REDIS] = str(exc)
            services[GATEWAY_SEM] = start_gateway(fake.url, tmp, sut_cpus, semantic=True)
            if exe is not None:
                services[LITELLM] = start_litellm(exe, fake.url, tmp, sut_cpus)
            progress(
                f"started {', '.join(services)}; waiting until they answer "
                f"(generator and fake on CPUs {gen_cpus}, servers on {sut_cpus})"
            )
            for name, svc in list(services.items()):
                probe = svc.url + ("/health/liveliness" if name == LITELLM else "/v1/models")
                try:
                    wait_ready(svc, probe, 240.0 if name == LITELLM else 60.0)
                except StartFailed as exc:
                    if name in (BARE, GATEWAY):
                        raise
                    out.unavailable[name] = str(exc)
                    svc.stop()
                    del services[name]
            progress(f"all up after {time.monotonic() - started:.0f} s")
            asyncio.run(_measure(settings, services, fake, out, progress))
        finally:
            for svc in services.values():
                svc.stop()
            if redis is not None:
                redis.stop()
            fake.stop()
    return build_results(out, settings)


def run(args: argparse.Namespace, target: object, progress: Progress) -> list[Result]:
    """``python -m perf ai``: on this host, whatever the target."""
    return measure(args.quick, progress=progress)


def summary(results: Sequence[Result]) -> str:
    """The goals, one line each, for the end of the CLI output."""
    lines = []
    for r in results:
        if r.metric.startswith("goal_"):
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
            lines.append(
                f"- {r.metric} {r.path}: {r.value if r.value is not None else '-'} "
                f"{r.unit} vs {r.baseline} = {r.baseline_value} -> ratio {ratio}: "
                f"{r.note}"
            )
    return "\n".join(lines)


def _bare_proxy_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.ai bare-proxy")
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    web.run_app(
        create_bare_proxy(args.upstream),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bare-proxy":
        return _bare_proxy_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m perf.ai",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", type=Path, required=True, metavar="FILE")
    p.add_argument("--quick", action="store_true", help="5 rates x 2 s (about 2 minutes)")
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--litellm-venv", type=Path, default=CACHE_DIR / "litellm-venv")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        results = measure(
            args.quick,
            litellm=not args.no_litellm,
            litellm_venv=args.litellm_venv,
            pin=not args.no_pin,
        )
    except StartFailed as exc:
        print(f"perf.ai: {exc}", file=sys.stderr)
        return 1
    report.publish(
        "ai", results, args.json, started=started, summary=summary(results), quick=args.quick
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
