"""Squid (5.x) for the appliance's forward proxy: its config file and its commands.

What the ``proxy`` section means in squid.conf(5) terms (Squid configuration reference,
www.squid-cache.org/Doc/config/): ``http_port`` on each inside address; ``auth_param
basic`` with ``basic_ncsa_auth`` over an htpasswd file of crypt(3) hashes; ``dstdomain``
ACLs for exact names and ``.domain`` suffixes (the domain and its subdomains, as AWS
Network Firewall's domain lists), ``dstdom_regex`` for ``*.domain`` (subdomains only);
``CONNECT`` only to ``connect_ports`` and, when listed, ``connect_domains``; delay pools
of class 1 (one aggregate bucket per limit, refilled at ``kbps``); an ``ufs`` cache_dir
of ``size_mb`` or ``cache deny all``; ``hosts_file`` with the static names. The access
log is one JSON object per line (``logformat``), URL and user name URL-encoded so
every value is a valid JSON string.

Squid runs root-started with ``-N`` (no daemon fork, one process the agent supervises)
and drops to the ``proxy`` user, which must own the cache directory. Every path is under
the instance's run and log directories, so two instances on one host never meet.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from control.config.aws import Aws as AwsSection
from control.config.flowlogs import Shipping
from control.config.proxies import CRYPT_HASH_RE
from nfq.domain_pattern import split_pattern

BINARY = "squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
EFFECTIVE_USER = "proxy"
REALM = "Cloud Spectra proxy"
CACHE_MEM_MB = 8
MAX_OBJECT_MB = 64

# one JSON object per access: the fields an operator filters on; %#ru and %#un are
# URL-encoded (no quote or backslash can break the string), numbers are unquoted
LOGFORMAT = (
    '{"time":%ts.%03tu,"client":"%>a","user":"%#un","method":"%rm","url":"%#ru",'
    '"host":"%#>rd","status":%>Hs,"squid_status":"%Ss","bytes":%<st,"duration_ms":%tr}'
)


@dataclass(frozen=True, slots=True)
class Limit:
    """One delay pool: who shares it and its rate in bytes per second."""

    name: str
    bytes_per_second: int
    users: tuple[str, ...]
    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxy section as one instance runs it (rendered; secrets in ``users``)."""

    listen: tuple[str, ...]  # address:port
    users: tuple[tuple[str, str], ...]  # (name, crypt hash or password); empty: no auth
    allowed: tuple[str, ...]
    denied: tuple[str, ...]
    connect_ports: tuple[int, ...]
    connect_domains: tuple[str, ...]
    cache_mb: int  # 0: no cache
    limits: tuple[Limit, ...]
    hosts: tuple[tuple[str, str], ...]  # (name, address)
    transparent: str | None = None  # ip:port of the TPROXY listener (control.squid_tproxy)
    inside_interface: str = ""  # where intercepted connections arrive
    access_log: bool = True
    log_keep: int = 5  # rotated access logs Squid keeps (logfile_rotate)
    log_max_bytes: int = 64 << 20  # the step has Squid rotate past this size
    shipping: Shipping | None = None  # where the access log's lines go besides the file
    aws: AwsSection | None = None  # whose operational role ships them


@dataclass(frozen=True, slots=True)
class SquidPaths:
    """Every file of one instance's Squid."""

    config: Path
    passwords: Path
    hosts: Path
    pid: Path
    cache_dir: Path
    access_log: Path
    cache_log: Path

    @classmethod
    def under(cls, run_dir: Path, log_dir: Path) -> SquidPaths:
        base = run_dir / "squid"
        return cls(
            config=base / "squid.conf",
            passwords=base / "passwd",
            hosts=base / "hosts",
            pid=base / "squid.pid",
            cache_dir=base / "cache",
            access_log=log_dir / "proxy-access.json",
            cache_log=log_dir / "squid-cache.log",
        )


def _domain_acl(name: str, domains: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """ACL lines matching ``domains`` and the ACL names they define: exact and
    ``.suffix`` by dstdomain (``name``), ``*.suffix`` (subdomains only) by an anchored
    dstdom_regex (``name_re``); entries a ``.suffix`` covers are left out (Squid warns
    about overlapping dstdomain entries)."""
    split = {d: split_pattern(d) for d in domains}
    suffixes = {d for d, (kind, _) in split.items() if kind == "domain"}
    plain = sorted(
        d
        for d, (kind, _) in split.items()
        if kind != "subdomains"
        and not any(d != s and (d.endswith(s) or d == s[1:]) for s in suffixes)
    )
    regex = sorted({f".{n}" for kind, n in split.values() if kind == "subdomains"})
    lines = [f"acl {name} dstdomain {d}" for d in plain]
    lines += [f"acl {name}_re dstdom_regex -i {re.escape(d)}$" for d in regex]
    return lines, [n for n, used in ((name, plain), (f"{name}_re", regex)) if used]


# _AUTH_FIRST: authentication is the first http_access rule. A per-user delay pool's
# ``delay_access`` is a fast ACL check that evaluates ``proxy_auth``; for a request an
# earlier http_access rule denied before its credentials were checked (a CONNECT to a
# port or domain not listed), that check starts a helper lookup it cannot wait for,
# and Squid 5.7 dies of a segmentation fault (measured: every such CONNECT that
# carries credentials, right or wrong; without credentials it gets its 403). With
# authentication first, every request that reaches any other rule, and so any delay
# pool, carries credentials already checked.


def render_config(s: ProxySettings, paths: SquidPaths) -> str:
    """squid.conf for ``s``; deterministic (unchanged settings: unchanged text)."""
    out = [
        "# rendered by the Cloud Spectra agent; changes here are overwritten",
        *(f"http_port {a}" for a in s.listen),
        *([f"http_port {s.transparent} tproxy name=transparent"] if s.transparent else []),
        "visible_hostname spectra-proxy",
        f"cache_effective_user {EFFECTIVE_USER}",
        f"pid_filename {paths.pid}",
        f"hosts_file {paths.hosts}",
        f"cache_log {paths.cache_log}",
        f"logformat spectra_json {LOGFORMAT}",
        f"access_log stdio:{paths.access_log} logformat=spectra_json"
        if s.access_log
        else "access_log none",
        f"logfile_rotate {s.log_keep}",
        "cache_store_log none",
        "netdb_filename none",
        "pinger_enable off",
        "icp_port 0",
        "shutdown_lifetime 1 seconds",
        "forwarded_for delete",
        "acl CONNECT method CONNECT",
        f"acl connect_ports port {' '.join(str(p) for p in s.connect_ports)}",
    ]
    if s.cache_mb:
        out += [
            f"cache_mem {CACHE_MEM_MB} MB",
            f"maximum_object_size {MAX_OBJECT_MB} MB",
            f"cache_dir ufs {paths.cache_dir} {s.cache_mb} 16 256",
            f"coredump_dir {paths.cache_dir}",
        ]
    else:
        out += ["cache deny all", "cache_mem 0 MB"]
    if s.transparent:  # see control/squid_tproxy.py
        out += ["acl intercepted myportname transparent", "spoof_client_ip deny all"]
    if s.users:
        out += [
            f"auth_param basic program {NCSA_AUTH} {paths.passwords}",
            f"auth_param basic realm {REALM}",
            "auth_param basic credentialsttl 1 hour",
            "acl authenticated proxy_auth REQUIRED",
        ]
    denied, denied_acls = _domain_acl("denied_domains", s.denied)
    allowed, allowed_acls = _domain_acl("allowed_domains", s.allowed)
    connect, connect_acls = _domain_acl("connect_domains", s.connect_domains)
    out += [*denied, *allowed, *connect]
    if s.users:  # first (see _AUTH_FIRST); an intercepted client is never asked
        out += [f"http_access deny {'!intercepted ' if s.transparent else ''}!authenticated"]
    out += ["http_access deny CONNECT !connect_ports"]
    if connect_acls:  # CONNECT to a listed domain goes on to the checks below
        out += ["acl connect_listed any-of " + " ".join(connect_acls)]
        out += ["http_access deny CONNECT !connect_listed"]
    out += [f"http_access deny {acl}" for acl in denied_acls]
    out += [f"http_access allow {acl}" for acl in allowed_acls] or ["http_access allow all"]
    out += ["http_access deny all"]
    out += _delay_pools(s.limits, intercepted=bool(s.transparent))
    return "\n".join(out) + "\n"


def _delay_pools(limits: tuple[Limit, ...], intercepted: bool) -> list[str]:
    """Class-1 pools; networks match first, and an intercepted request (no credentials
    ever) never reaches a pool's ``proxy_auth`` check."""
    if not limits:
        return []
    out = [f"delay_pools {len(limits)}", "delay_initial_bucket_level 0"]
    for n, limit in enumerate(limits, start=1):
        access = []
        if limit.networks:
            out.append(f"acl limit_{limit.name}_nets src {' '.join(limit.networks)}")
            access.append(f"allow limit_{limit.name}_nets")
        if limit.users:
            out.append(f"acl limit_{limit.name}_users proxy_auth {' '.join(limit.users)}")
            access += ["deny intercepted"] if intercepted else []
            access.append(f"allow limit_{limit.name}_users")
        rate = limit.bytes_per_second
        out += [f"delay_class {n} 1", f"delay_parameters {n} {rate}/{rate}"]
        out += [f"delay_access {n} {a}" for a in (*access, "deny all")]
    return out


_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def crypt_sha512(name: str, password: str) -> str:
    """``password`` as a SHA-512 crypt(3) hash (``openssl passwd -6``, the password on
    stdin, never in an argv). The salt is derived from the user and the password, so an
    unchanged document renders an unchanged file (no reload), and two users with one
    password still get different hashes."""
    digest = hashlib.sha256(f"{name}\0{password}".encode()).digest()
    salt = "".join(_SALT_ALPHABET[b % 64] for b in digest[:16])
    proc = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password + "\n", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.startswith("$6$"):
        raise RuntimeError(f"openssl passwd -6 failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def render_passwords(s: ProxySettings) -> str:
    """The htpasswd file basic_ncsa_auth reads (``name:hash`` lines; a password that is
    not a crypt hash yet is hashed here)."""
    return "".join(
        f"{name}:{secret if CRYPT_HASH_RE.match(secret) else crypt_sha512(name, secret)}\n"
        for name, secret in s.users
    )


def render_hosts(s: ProxySettings) -> str:
    """The hosts file Squid resolves from before DNS."""
    return "".join(f"{address} {name}\n" for name, address in s.hosts)


@dataclass(frozen=True, slots=True)
class Checked:
    """The result of ``squid -k parse`` on a config file."""

    ok: bool
    output: str


def parse(config: Path, timeout: float = 30.0) -> Checked:
    """``squid -k parse -f config``: Squid's own check of a config file (exit 0: ok).
    The errors are its ``FATAL`` / ``ERROR`` lines (warnings do not fail)."""
    proc = subprocess.run(
        [BINARY, "-k", "parse", "-f", str(config)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln.split("| ", 1)[-1] for ln in lines if "FATAL" in ln or "ERROR" in ln]
    return Checked(proc.returncode == 0 and not errors, " | ".join(errors[-3:]) or proc.stderr)


def version() -> str | None:
    """Squid's version (``squid -v``: ``Squid Cache: Version 5.7``)."""
    try:
        out = subprocess.run(
            [BINARY, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    found = re.search(r"Version (\S+)", out)
    return found.group(1) if found else None
