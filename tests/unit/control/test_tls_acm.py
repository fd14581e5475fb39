"""ACM certificates reach the TLS step: ``spectra run --aws`` hands it an ACM client of
the operational role (one session factory per ``aws`` section), the export against
moto's server becomes the HAProxy PEM bundle, a renewed certificate under the same ARN
becomes a new bundle, and the step re-exports every ``ACM_SECONDS``.

moto has no managed renewal: the test re-imports a new certificate under the ARN and
marks it exportable in moto's backend, which is what ACM's renewal looks like to a caller
(same ARN, new certificate)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from control.agent import Agent, AgentSettings
from control.config import parse_document
from control.config.aws import Aws as AwsSection
from control.steps import ConvergeError, StepContext
from control.steps.haproxy import ACM_SECONDS, HaproxyStep
from control.store import SqliteStore
from control.tls_certs import check_pair
from tests.certs import make_cert

pytestmark = pytest.mark.timeout(60)
ACCOUNT = "123456789012"  # moto's default account: the admin client's and the role's
REGION = "eu-west-1"


def admin_acm(endpoint: str) -> Any:
    """The test's own hands on ACM (static credentials moto accepts)."""
    return boto3.client("acm", region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def section(endpoint: str) -> AwsSection:
    return AwsSection.model_validate({
        "region": REGION, "endpoint_url": endpoint,
        "operational_role": {"name": "gw-cross-account-role4", "external_id": "ext-4",
                             "account_id": ACCOUNT},
    })  # fmt: skip


def tls_doc(arn: str) -> Any:
    listener = {"name": "web", "certificate_arn": arn,
                "backends": [{"address": "10.0.1.10", "port": 8080}]}  # fmt: skip
    return parse_document({"interfaces": {"inside": "in", "outside": "out"},
                           "tls": {"enabled": True, "listeners": [listener]}})  # fmt: skip


def agent_step(aws: bool) -> HaproxyStep:
    agent = Agent(AgentSettings(instance=f"acm-{uuid.uuid4().hex[:8]}", aws=aws),
                  SqliteStore(":memory:"))  # fmt: skip
    return next(s for s in agent.converger.steps if isinstance(s, HaproxyStep))


def tmp_step(tmp_path: Path) -> HaproxyStep:
    step = HaproxyStep(StepContext("t", tmp_path / "run", tmp_path / "log"))
    step.paths.certs.mkdir(parents=True)  # as _converge makes it
    return step


def serial(pem: bytes) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                         capture_output=True, check=True)  # fmt: skip
    return out.stdout.decode().strip()


def split(bundle: Path) -> tuple[bytes, bytes]:
    """A HAProxy PEM bundle -> (certificates, private key)."""
    data = bundle.read_bytes()
    at = data.index(b"-----BEGIN PRIVATE KEY-----")
    return data[:at], data[at:]


def test_an_acm_certificate_becomes_the_pem_bundle_and_its_renewal_a_new_one(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the instance role's stand-in for the session factory's base session
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    admin = admin_acm(moto_endpoint)
    arn = admin.request_certificate(DomainName="gw.example.com",
                                    Options={"Export": "ENABLED"})["CertificateArn"]  # fmt: skip
    step = tmp_step(tmp_path)
    step.acm_client = agent_step(aws=True).acm_client  # what spectra run --aws hands it
    assert step.acm_client is not None
    part = HaproxyStep.render(tls_doc(arn), None)  # type: ignore[arg-type]
    assert part is not None
    listener, aws = part.listeners[0], section(moto_endpoint)

    first = step._pem("tls.listeners[0]", listener, aws)
    cert, key = split(first)
    check_pair(cert, key)  # the decrypted key of the exported certificate
    exported = admin.export_certificate(CertificateArn=arn, Passphrase=b"x" * 8)["Certificate"]
    assert serial(cert) == serial(exported.encode())
    assert first.stat().st_mode & 0o777 == 0o600
    assert step._pem("tls.listeners[0]", listener, aws) == first  # unchanged: same file

    # renewed in ACM: same ARN, new certificate -> a new bundle (a reload, not a restart)
    new_cert, new_key = make_cert(tmp_path, "gw.example.com")
    admin.import_certificate(CertificateArn=arn, Certificate=Path(new_cert).read_bytes(),
                             PrivateKey=Path(new_key).read_bytes())  # fmt: skip
    from moto.acm.models import acm_backends

    acm_backends[ACCOUNT][REGION].get_certificate(arn).cert_options["Export"] = "ENABLED"
    second = step._pem("tls.listeners[0]", listener, aws)
    assert second != first
    assert serial(split(second)[0]) == serial(Path(new_cert).read_bytes())


def test_without_aws_an_acm_certificate_is_refused_naming_the_field(tmp_path: Path) -> None:
    assert agent_step(aws=False).acm_client is None
    part = HaproxyStep.render(
        tls_doc("arn:aws:acm:eu-west-1:123456789012:certificate/abc"),
        None,  # type: ignore[arg-type]
    )
    assert part is not None
    with pytest.raises(ConvergeError, match=r"^tls.listeners\[0\].certificate_arn: .*--aws"):
        tmp_step(tmp_path)._pem("tls.listeners[0]", part.listeners[0], part.aws)


def test_an_unknown_arn_is_refused_naming_the_field(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    step = tmp_step(tmp_path)
    step.acm_client = agent_step(aws=True).acm_client
    missing = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/{uuid.uuid4()}"
    part = HaproxyStep.render(tls_doc(missing), None)  # type: ignore[arg-type]
    assert part is not None
    with pytest.raises(ConvergeError, match=r"^tls.listeners\[0\].certificate_arn: .*NotFound"):
        step._pem("tls.listeners[0]", part.listeners[0], section(moto_endpoint))


def test_acm_certificates_are_exported_again_every_acm_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = tmp_step(tmp_path)
    part = HaproxyStep.render(
        tls_doc("arn:aws:acm:eu-west-1:123456789012:certificate/abc"),
        None,  # type: ignore[arg-type]
    )
    assert part is not None
    converged: list[float] = []
    now = [5.0]  # a monotonic clock may be small: the machine may have just booted
    monkeypatch.setattr("control.steps.haproxy.time.monotonic", lambda: now[0])
    monkeypatch.setattr(step, "_converge", lambda p: converged.append(now[0]))
    monkeypatch.setattr(step.daemon, "alive", lambda: True)
    step.part = part
    step.tick()
    assert converged == [5.0]
    now[0] += ACM_SECONDS - 1
    step.tick()
    assert converged == [5.0]  # not yet: ACM is asked once per ACM_SECONDS
    now[0] += 1
    step.tick()
    assert converged == [5.0, 5.0 + ACM_SECONDS]
