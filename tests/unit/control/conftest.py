"""Fixtures of the control-plane unit tests: documents, stores, a moto server, tokens.

The SSM store runs against a real moto server on 127.0.0.1 (started once per session)
through a real boto3 client over HTTP: no in-process mocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from control.api import ApiSettings, new_token
from control.config.operations import ApiToken
from control.store import SqliteStore, SsmStore
from control.store.base import ConfigStore
from perf.lab.vpc import motod

ADMIN_TOKEN = new_token()
READ_TOKEN = new_token()


def minimal() -> dict[str, Any]:
    """The smallest valid document."""
    return {"interfaces": {"inside": "inside", "outside": "outside"}}


def full() -> dict[str, Any]:
    """A document that uses every section the renderer reads, plus secrets."""
    from control.api import hash_token

    return {
        "schema_version": 1,
        "interfaces": {"inside": "inside", "outside": "outside", "data_plane": "xdp"},
        "nat": {"outside_addresses": "interface", "port_range": [20000, 40000]},
        "rules": {
            "default": "deny",
            "entries": [
                {
                    "action": "deny",
                    "dst": "198.51.100.0/24",
                    "proto": "tcp",
                    "ports": [25, 25],
                    "comment": "no smtp",
                },
                {"action": "allow", "src": "10.0.1.0/24"},
                {"action": "allow", "proto": "udp", "ports": [53, 53]},
                {"action": "deny", "src": "10.0.2.0/24", "proto": "icmp"},
            ],
        },
        "port_forwards": [
            {"proto": "tcp", "port": 2222, "to_address": "10.0.1.10", "to_port": 22},
            {"proto": "udp", "port": 5353, "to_address": "10.0.1.11"},
        ],
        "proxy": {
            "enabled": True,
            "auth": {"mode": "basic", "users": [{"name": "alice", "password": "hunter2-proxy"}]},
            "allowed_domains": [".example.com", "api.example.org"],
        },
        "api": {"tokens": [{"name": "ops", "role": "admin", "hash": hash_token(ADMIN_TOKEN)}]},
    }


@pytest.fixture
def minimal_doc() -> dict[str, Any]:
    return minimal()


@pytest.fixture
def full_doc() -> dict[str, Any]:
    return full()


LIFECYCLE_LOG = "moto-lifecycle.jsonl"


@pytest.fixture(scope="session")
def moto_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("moto")


@pytest.fixture(scope="session")
def moto_endpoint(moto_dir: Path) -> Iterator[str]:
    """A moto server on a random loopback port for the whole session, with the AWS
    behaviours the gateway relies on that moto lacks (:mod:`perf.lab.vpc.motod`:
    address reassignment, an Elastic IP on a secondary IP, lifecycle actions recorded
    in ``moto_dir / LIFECYCLE_LOG``)."""
    motod.patch(moto_dir / LIFECYCLE_LOG)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def ssm_client(endpoint: str) -> Any:
    return boto3.client(
        "ssm",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


@pytest.fixture
def ssm_store(moto_endpoint: str) -> Iterator[SsmStore]:
    store = SsmStore(ssm_client(moto_endpoint), f"/test/{uuid.uuid4().hex[:12]}/config")
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "spectra" / "config.db")
    yield store
    store.close()


@pytest.fixture(params=["local", "ssm"])
def store(request: pytest.FixtureRequest) -> ConfigStore:
    """Each store implementation in turn (contract tests)."""
    name = "sqlite_store" if request.param == "local" else "ssm_store"
    result: ConfigStore = request.getfixturevalue(name)
    return result


@pytest.fixture
def api_settings() -> ApiSettings:
    from control.api import hash_token

    return ApiSettings(
        extra_tokens=(
            ApiToken(name="bootstrap", role="admin", hash=hash_token(ADMIN_TOKEN)),
            ApiToken(name="viewer", role="read", hash=hash_token(READ_TOKEN)),
        ),
        max_body_bytes=64 * 1024,
        token_refresh_seconds=0.0,
    )


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
