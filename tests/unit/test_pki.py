"""The fleet CA (owuibuild.pki): made once, kept, reused byte for byte, renewed when due."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from pathlib import Path

import pytest
from conftest import BLUEPRINTS
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from owuibuild import pki
from owuibuild.diagnostics import Diagnostic, Severity
from owuibuild.pipeline import Compiled, compile_blueprint
from owuibuild.targets import Artifact
from owuibuild.verify import verify

pytestmark = pytest.mark.unit

DAY = datetime.date(2026, 12, 1)


def blueprint(tmp_path: Path, name: str = "scale-out.yml") -> Path:
    path = tmp_path / name
    shutil.copy(BLUEPRINTS / name, path)
    return path


def compiled_ok(path: Path, today: datetime.date = DAY, **kw: bool) -> Compiled:
    c = compile_blueprint(path, today=today, **kw)
    assert c.ok, [d.as_dict() for d in c.diagnostics]
    return c


def errors(c: Compiled) -> list[Diagnostic]:
    return [d for d in c.diagnostics if d.severity is Severity.ERROR]


def files(c: Compiled) -> dict[str, Artifact]:
    return {a.path: a for a in c.artifacts}


def test_first_render_makes_a_private_ca_and_a_certificate_per_service_host(
    tmp_path: Path,
) -> None:
    path = blueprint(tmp_path)
    c = compiled_ok(path)
    store = pki.tls_path(path)
    assert store.name == "scale-out.tls.secrets.yml"
    assert store.stat().st_mode & 0o777 == 0o600
    assert c.secrets is not None and c.plan is not None
    tls = c.secrets.tls
    # The public certificate is in the output for clients; it holds no key.
    out = files(c)["fleet-ca.crt"]
    assert not out.secret and out.data.decode() == tls.ca_cert
    ca = x509.load_pem_x509_certificate(tls.ca_cert.encode())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[attr-defined]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # One certificate per host that runs a shared service, naming it and its address.
    assert set(tls.hosts) == set(c.plan.certificate_hosts) == {
        h.name for h in c.plan.hosts if h.services
    }
    assert "db-1" in tls.hosts and not all(h.name in tls.hosts for h in c.plan.hosts)
    for host, address in c.plan.certificate_hosts.items():
        cert = x509.load_pem_x509_certificate(tls.hosts[host].cert.encode())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [host]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert tls.hosts[host].not_after == DAY + datetime.timedelta(days=pki.HOST_DAYS - 1)
    # Keys never reach a file that is not secret-bearing.
    for a in c.artifacts:
        if not a.secret:
            assert not any(pki.key_fingerprint(k).encode() in a.data for k in tls.private_keys())


def test_later_renders_reuse_everything_byte_for_byte(tmp_path: Path) -> None:
    path = blueprint(tmp_path)
    first = compiled_ok(path)
    stored = pki.tls_path(path).read_bytes()
    again = compiled_ok(path, today=DAY + datetime.timedelta(days=300))
    assert not again.secrets_changed and again.notices == []
    assert pki.tls_path(path).read_bytes() == stored
    assert [(a.path, a.data) for a in again.artifacts] == [
        (a.path, a.data) for a in first.artifacts
    ]


def test_a_certificate_close_to_its_end_is_issued_again_and_said_so(tmp_path: Path) -> None:
    path = blueprint(tmp_path, "seed-example.yml")
    first = compiled_ok(path)
    assert first.secrets is not None
    old = first.secrets.tls.hosts["ai-shared"]
    not_yet = old.not_after - datetime.timedelta(days=pki.RENEW_DAYS + 1)
    assert not compiled_ok(path, today=not_yet).secrets_changed
    due = old.not_after - datetime.timedelta(days=pki.RENEW_DAYS - 1)
    # --check writes nothing and says the file would change.
    check = compiled_ok(path, today=due, write_secrets=False)
    assert check.secrets_changed and check.notices == []
    renewed = compiled_ok(path, today=due)
    assert renewed.secrets is not None
    new = renewed.secrets.tls.hosts["ai-shared"]
    assert new.cert != old.cert and new.key != old.key and new.not_after > old.not_after
    assert renewed.secrets.tls.ca_cert == first.secrets.tls.ca_cert
    assert renewed.notices == [
        f"issued a new certificate for host ai-shared (it expires on {old.not_after}); "
        "replace ai-shared to put it in service"
    ]


def test_a_moved_host_gets_a_certificate_for_its_new_address(tmp_path: Path) -> None:
    path = blueprint(tmp_path, "seed-example.yml")
    compiled_ok(path)
    path.write_text(path.read_text().replace("address: 10.0.5.24", "address: 10.0.5.25"))
    moved = compiled_ok(path)
    assert moved.secrets is not None
    assert moved.secrets.tls.hosts["ai-shared"].names == ("ai-shared", "10.0.5.25")
    assert "it named ai-shared, 10.0.5.24" in moved.notices[0]


def test_an_expired_ca_is_a_located_error_with_a_hint(tmp_path: Path) -> None:
    path = blueprint(tmp_path, "seed-example.yml")
    compiled_ok(path)
    later = DAY + datetime.timedelta(days=pki.CA_DAYS + 1)
    c = compile_blueprint(path, today=later)
    assert not c.ok and not c.artifacts
    (d,) = errors(c)
    assert d.path == ("ca", "not_after") and "the fleet CA expired on" in d.message
    assert d.file == str(pki.tls_path(path)) and d.line is not None and d.column is not None
    assert d.hint is not None and "replace every host" in d.hint


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("ca: {}\n", ("ca", "cert"), "cert is missing or unreadable"),
        ("ca: [\n", (), "the CA file cannot be parsed"),
        ("hosts: {}\n", ("ca",), "the CA file has no ca entry"),
    ],
)
def test_an_unreadable_ca_file_is_a_located_error(
    tmp_path: Path, text: str, path: tuple[str, ...], message: str
) -> None:
    bp = blueprint(tmp_path, "seed-example.yml")
    store = pki.tls_path(bp)
    store.write_text(text)
    store.chmod(0o600)
    c = compile_blueprint(bp, today=DAY)
    assert not c.ok
    d = errors(c)[0]
    assert (d.path, d.message) == (path, message)
    assert d.file == str(store) and d.hint
    assert store.read_text() == text  # never overwritten


def test_a_ca_file_others_can_read_is_refused(tmp_path: Path) -> None:
    bp = blueprint(tmp_path, "seed-example.yml")
    compiled_ok(bp)
    pki.tls_path(bp).chmod(0o644)
    c = compile_blueprint(bp, today=DAY)
    assert not c.ok and "readable by others" in errors(c)[0].message


def test_verify_refuses_a_private_key_in_a_public_file(tmp_path: Path) -> None:
    c = compiled_ok(blueprint(tmp_path, "seed-example.yml"))
    assert c.secrets is not None
    key = c.secrets.tls.hosts["ai-shared"].key
    leaky = [Artifact("README.md", f"see:\n{key}".encode())]
    (problem,) = verify(leaky, set(), c.secrets.tls.private_keys())
    assert "secret value would be written" in problem.message
    assert verify([Artifact("secret.pem", key.encode(), secret=True)], set(), [key]) == []
