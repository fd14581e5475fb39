"""Config stores: the shared contract (local and SSM), then what only SSM has."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigDocument, dump_document, parse_document
from control.store import (
    ConfigStore,
    CorruptRevision,
    SqliteStore,
    SsmStore,
    VersionConflict,
    VersionNotFound,
    open_store,
)
from control.store.ssm import CHUNK_CHARS
from tests.unit.control.conftest import full, minimal, ssm_client


def doc(**changes: Any) -> ConfigDocument:
    return parse_document({**minimal(), **changes})


def test_empty_store(store: ConfigStore) -> None:
    assert store.head() == 0
    assert store.versions() == []
    with pytest.raises(VersionNotFound):
        store.latest()
    with pytest.raises(VersionNotFound):
        store.get(1)


def test_put_get_history(store: ConfigStore) -> None:
    assert store.put(doc(), 0, "alice") == 1
    assert store.put(doc(nat={"port_range": [2000, 3000]}), 1, "bob") == 2
    version, latest = store.latest()
    assert version == 2 and latest.nat.port_range == (2000, 3000)
    assert store.get(1) == doc()
    infos = store.versions()
    assert [i.version for i in infos] == [2, 1]
    assert infos[0].actor == "bob" and infos[1].actor == "alice"
    assert infos[0].summary == "2 changes: changed nat.port_range[0], changed nat.port_range[1]"
    assert infos[1].summary == "initial document"
    assert infos[0].created_at >= infos[1].created_at > 0
    assert store.info(2) == infos[0]


def test_stale_writer_gets_a_conflict(store: ConfigStore) -> None:
    store.put(doc(), 0, "a")
    store.put(doc(logging={"level": "debug"}), 1, "a")
    with pytest.raises(VersionConflict) as info:
        store.put(doc(), 1, "b")
    assert (info.value.expected, info.value.current) == (1, 2)
    with pytest.raises(VersionConflict):
        store.put(doc(), 0, "b")
    with pytest.raises(VersionConflict):
        store.put(doc(), 7, "b")
    assert store.head() == 2


def test_two_concurrent_writers_exactly_one_wins(store: ConfigStore) -> None:
    store.put(doc(), 0, "seed")
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def write(name: str, level: str) -> None:
        barrier.wait()
        try:
            outcome[name] = store.put(doc(logging={"level": level}), 1, name)
        except VersionConflict as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=write, args=a) for a in (("w1", "debug"), ("w2", "error"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wins = [name for name, result in outcome.items() if result == 2]
    losses = [name for name, result in outcome.items() if isinstance(result, VersionConflict)]
    assert len(wins) == 1 and len(losses) == 1, outcome
    assert store.head() == 2
    assert store.info(2).actor == wins[0]


def test_rollback_writes_a_new_version(store: ConfigStore) -> None:
    store.put(doc(), 0, "a")
    store.put(doc(logging={"level": "debug"}), 1, "a")
    assert store.rollback(1, "ops") == 3
    assert store.get(3) == store.get(1)
    info = store.info(3)
    assert info.rollback_of == 1 and info.actor == "ops"
    assert info.summary.startswith("rollback to version 1: 1 change: changed logging.level")
    with pytest.raises(VersionConflict):
        store.rollback(1, "ops", expected_version=2)


def test_secrets_survive_the_round_trip(store: ConfigStore) -> None:
    document = parse_document(full())
    store.put(document, 0, "a")
    stored = store.get(1)
    assert dump_document(stored, reveal_secrets=True) == dump_document(
        document, reveal_secrets=True
    )


def test_local_store_file_is_private(sqlite_store: SqliteStore) -> None:
    assert sqlite_store.path.stat().st_mode & 0o077 == 0


def test_local_store_detects_tampering(sqlite_store: SqliteStore) -> None:
    sqlite_store.put(doc(), 0, "a")
    sqlite_store._db.execute("UPDATE revisions SET document = replace(document, 'inside', 'evil0')")
    with pytest.raises(CorruptRevision, match="hash"):
        sqlite_store.get(1)


def _big() -> ConfigDocument:
    entries = [
        {"action": "allow", "src": f"10.{i // 250}.{i % 250}.0/24", "comment": f"team {i} " * 8}
        for i in range(400)
    ]
    return doc(rules={"entries": entries})


def _names(store: SsmStore, under: str) -> dict[str, str]:
    pages = store.client.get_paginator("get_parameters_by_path").paginate(
        Path=f"{store.prefix}/{under}", Recursive=True
    )
    return {p["Name"]: p["Type"] for page in pages for p in page["Parameters"]}


def test_ssm_chunks_a_document_larger_than_one_parameter(ssm_store: SsmStore) -> None:
    big = _big()
    ssm_store.put(big, 0, "a")
    chunks = [n for n in _names(ssm_store, "blobs") if "/secrets/" not in n]
    assert len(chunks) > 3
    assert ssm_store.get(1) == big


def test_ssm_keeps_secrets_in_securestrings_only(ssm_store: SsmStore) -> None:
    ssm_store.put(parse_document(full()), 0, "a")
    names = _names(ssm_store, "blobs")
    secure = {n for n, kind in names.items() if kind == "SecureString"}
    assert len(secure) == 2 and all("/secrets/" in n for n in secure)
    plain = ssm_store.client.get_parameters(Names=[n for n in names if n not in secure][:10])
    text = "".join(p["Value"] for p in plain["Parameters"])
    assert "hunter2-proxy" not in text and "sha256:" not in text


def test_ssm_reads_verify_the_content_hash(ssm_store: SsmStore) -> None:
    ssm_store.put(doc(), 0, "a")
    chunk = next(n for n in _names(ssm_store, "blobs") if "/secrets/" not in n)
    ssm_store.client.put_parameter(
        Name=chunk, Value='{"document":{}}', Type="String", Overwrite=True
    )
    with pytest.raises(CorruptRevision, match="hash"):
        ssm_store.get(1)


def test_ssm_head_is_only_a_hint(ssm_store: SsmStore) -> None:
    for i in range(12):
        ssm_store.put(doc(logging={"level": ["info", "debug"][i % 2]}), i, "a")
    ssm_store.client.put_parameter(Name=f"{ssm_store.prefix}/head", Value="1", Overwrite=True)
    assert ssm_store.head() == 12
    with pytest.raises(VersionConflict):
        ssm_store.put(doc(), 11, "late")


def test_ssm_loser_leaves_no_blob(ssm_store: SsmStore) -> None:
    ssm_store.put(doc(), 0, "a")
    ssm_store.put(doc(logging={"level": "debug"}), 1, "a")
    before = set(_names(ssm_store, "blobs"))
    with pytest.raises(VersionConflict):
        # base 1 exists, so the writer gets as far as the claim of version 2
        ssm_store.put(doc(logging={"level": "error"}), 1, "b")
    assert set(_names(ssm_store, "blobs")) == before


def test_ssm_prunes_old_versions(moto_endpoint: str) -> None:
    store = SsmStore(ssm_client(moto_endpoint), "/test/prune/config", keep_versions=3)
    try:
        for i in range(6):
            store.put(doc(logging={"level": ["info", "debug"][i % 2]}), i, "a")
        assert [i.version for i in store.versions()] == [6, 5, 4]
        assert store.head() == 6
        assert len(_names(store, "blobs")) == 3
    finally:
        store.close()


def test_chunk_size_fits_the_standard_tier() -> None:
    assert CHUNK_CHARS == 4096


def test_open_store_urls(tmp_path: Any) -> None:
    local = open_store(f"local:{tmp_path}/c.db")
    assert isinstance(local, SqliteStore)
    local.close()
    with pytest.raises(Exception, match="expected local"):
        open_store("s3:/x")


def test_local_store_opens_while_another_process_holds_the_file(tmp_path: Path) -> None:
    """Opening waits for a lock another process holds (two agents starting together)."""
    import sqlite3
    import threading

    path = tmp_path / "race.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        store = SqliteStore(path)
        assert store.head() == 0
        store.close()
    finally:
        release.join()
        holder.close()
