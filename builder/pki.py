"""The fleet's certificate authority: `<blueprint>.tls.secrets.yml`, mode 0600.

Beside the secret store and like it, a room with randomness, and the only room that reads the
clock. On the first render it makes a fleet CA (ECDSA P-256) and one server certificate per
host that runs a shared service (SANs: the host's name and private address), and keeps them,
private keys included, in the file. Later renders reuse them byte for byte, so the output stays
identical, until a host certificate is within RENEW_DAYS of its end, or no longer names its
host's name and address: then it is issued again, and the render says so. An expired or
unreadable CA is a located error; the hosts' trust in the fleet rests on it, so it is never
replaced silently.

Each entry keeps its end date and names next to the PEM text, so a render only compares dates:
the `cryptography` library is imported only to issue.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .diagnostics import Diagnostic, error
from .secrets import write_private

CA_DAYS = 3650
HOST_DAYS = 730
RENEW_DAYS = 30  # a host certificate this close to its end is issued again
HEADER = (
    "# owuibuild fleet CA and host certificates for {blueprint}. Generated; keep this file\n"
    "# private (mode 0600) and back it up with the secrets file: every host trusts this CA.\n"
    "# Do not edit: delete a host's entry to issue its certificate again.\n"
)
CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
KEY_BEGIN = "-----BEGIN PRIVATE KEY-----"


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key (PEM text), its last valid day and its names."""

    cert: str
    key: str
    not_after: datetime.date
    names: tuple[str, ...]

    def to_data(self) -> dict[str, Any]:
        return {
            "cert": self.cert,
            "key": self.key,
            "not_after": self.not_after.isoformat(),
            "names": list(self.names),
        }


@dataclass(frozen=True)
class FleetPKI:
    ca: Issued
    hosts: Mapping[str, Issued]  # by host name, for every host that runs a shared service
    # By host name, for every host whose front door serves its instances' host names with
    # certificates from the fleet CA (front_door.tls: internal).
    front_doors: Mapping[str, Issued] = field(default_factory=dict)

    @property
    def ca_cert(self) -> str:
        return self.ca.cert

    def private_keys(self) -> tuple[str, ...]:
        return (
            self.ca.key,
            *(h.key for h in self.hosts.values()),
            *(d.key for d in self.front_doors.values()),
        )


def tls_path(blueprint: Path) -> Path:
    from .secrets import secrets_path

    path = secrets_path(blueprint)
    return path.with_name(path.name.removesuffix(".secrets.yml") + ".tls.secrets.yml")


def key_fingerprint(key: str) -> str:
    """A line of a private key's PEM body: found in a file only if the key was written there."""
    body = [line for line in key.splitlines() if line and not line.startswith("-----")]
    return body[0]


# -- reading ------------------------------------------------------------------------------------

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RESTORE_HINT = (
    "restore the file from backup, or delete it to make a new CA (then replace every host)"
)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _mapping(node: yaml.Node) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _issued(
    node: yaml.Node, path: tuple[str | int, ...], name: str, hint: str
) -> tuple[Issued | None, list[Diagnostic]]:
    fields = _mapping(node)
    problems = []
    values: dict[str, str] = {}
    for key, begin in (("cert", CERT_BEGIN), ("key", KEY_BEGIN), ("not_after", ""), ("names", "")):
        value = fields.get(key)
        if key == "names":
            ok = isinstance(value, yaml.SequenceNode) and all(
                isinstance(n, yaml.ScalarNode) for n in value.value
            )
        else:
            ok = isinstance(value, yaml.ScalarNode) and str(value.value).startswith(begin)
        if not ok:
            at = value if value is not None else node
            problems.append(
                error((*path, key), f"{key} is missing or unreadable", hint).located(
                    name, *_mark(at)
                )
            )
        elif isinstance(value, yaml.ScalarNode):
            values[key] = value.value
    if problems:
        return None, problems
    try:
        not_after = datetime.date.fromisoformat(values["not_after"])
    except ValueError:
        at = fields["not_after"]
        return None, [
            error((*path, "not_after"), "not_after is not a date", hint).located(name, *_mark(at))
        ]
    names_node = fields["names"]
    assert isinstance(names_node, yaml.SequenceNode)
    names = tuple(str(n.value) for n in names_node.value)
    return Issued(values["cert"], values["key"], not_after, names), []


def read(path: Path, today: datetime.date) -> tuple[FleetPKI | None, list[Diagnostic]]:
    """The stored CA and host certificates (None when there is no file). Nothing is written."""
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, []
    if st.st_mode & 0o077:
        return None, [
            error(
                (),
                f"the CA file is readable by others (mode {st.st_mode & 0o777:04o})",
                f"run: chmod 600 {name}",
            ).located(name, None, None)
        ]
    try:
        root = yaml.compose(path.read_text("utf-8"), Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return None, [error((), "the CA file cannot be parsed", RESTORE_HINT).located(name, *where)]
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None, [
            error((), "the CA file cannot be read", RESTORE_HINT).located(name, None, None)
        ]
    top = _mapping(root) if root is not None else {}
    ca_node = top.get("ca")
    if ca_node is None:
        at = _mark(root) if root is not None else (None, None)
        return None, [
            error(("ca",), "the CA file has no ca entry", RESTORE_HINT).located(name, *at)
        ]
    ca, problems = _issued(ca_node, ("ca",), name, RESTORE_HINT)
    entries: dict[str, dict[str, Issued]] = {"hosts": {}, "front_doors": {}}
    for section, found in entries.items():
        for host, node in _mapping(top.get(section, yaml.MappingNode("", []))).items():
            issued, host_problems = _issued(
                node,
                (section, host),
                name,
                "delete this host's entry: the next render issues it again",
            )
            problems += host_problems
            if issued is not None:
                found[host] = issued
    if ca is not None and ca.not_after < today:
        problems.append(
            error(
                ("ca", "not_after"),
                f"the fleet CA expired on {ca.not_after.isoformat()}",
                "delete the file to make a new CA, render, and replace every host",
            ).located(name, *_mark(_mapping(ca_node)["not_after"]))
        )
    if problems or ca is None:
        return None, problems
    return FleetPKI(ca, entries["hosts"], entries["front_doors"]), []


# -- issuing --------------------------------------------------------------------------------------


def _names(host: str, address: str) -> tuple[str, ...]:
    return (host, address)


def issue_ca(fleet: str, today: datetime.date) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "owuibuild"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{fleet} fleet CA"),
        ]
    )
    start, end = _validity(today, CA_DAYS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _issued_from(cert, key, (fleet,))


def issue_host(ca: Issued, host: str, address: str, today: datetime.date) -> Issued:
    """A service host's certificate: its name and its private address."""
    return issue_server(ca, host, _names(host, address), today)


def issue_server(
    ca: Issued, common_name: str, names: tuple[str, ...], today: datetime.date
) -> Issued:
    """A server certificate for ``names``: DNS names, and IPv4 addresses as IP names."""

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert.encode())
    ca_key = serialization.load_pem_private_key(ca.key.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(today, HOST_DAYS)
    end = min(end, ca_cert.not_valid_after_utc)  # never valid longer than its CA
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _issued_from(cert, key, names)


def _general_name(name: str) -> Any:
    import ipaddress

    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, signs_certificates: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(today: datetime.date, days: int) -> tuple[datetime.datetime, datetime.datetime]:
    # From the day before: a host whose clock is a little behind still accepts it.
    midnight = datetime.datetime.combine(today, datetime.time(), tzinfo=datetime.UTC)
    return midnight - datetime.timedelta(days=1), midnight + datetime.timedelta(days=days)


def _issued_from(cert: Any, key: Any, names: tuple[str, ...]) -> Issued:
    from cryptography.hazmat.primitives import serialization

    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    # The last day the certificate is valid on all of it.
    not_after = (cert.not_valid_after_utc - datetime.timedelta(seconds=1)).date()
    return Issued(cert_pem, key_pem, not_after, names)


# -- the store ------------------------------------------------------------------------------------


def _completed(
    ca: Issued,
    old_entries: Mapping[str, Issued],
    wanted: Mapping[str, tuple[str, ...]],
    today: datetime.date,
    what: str,
) -> tuple[dict[str, Issued], bool, list[str]]:
    """A certificate for every host in ``wanted`` (host -> names): stored ones reused, missing,
    renamed or expiring ones issued. Returns (entries, changed, notices)."""
    changed = False
    notices: list[str] = []
    entries: dict[str, Issued] = {}
    renew_from = today + datetime.timedelta(days=RENEW_DAYS)
    for host in sorted(wanted):
        names = wanted[host]
        old = old_entries.get(host)
        if old is not None and old.names == names and old.not_after >= renew_from:
            entries[host] = old
            continue
        entries[host] = issue_server(ca, host, names, today)
        changed = True
        if old is None:
            continue
        if old.names != names:
            why = f"it named {', '.join(old.names)}"
        else:
            why = f"it expires on {old.not_after.isoformat()}"
        notices.append(
            f"issued a new {what} for host {host} ({why}); replace {host} to put it in service"
        )
    # Hosts that no longer need one keep their entries: nothing is ever lost by a render.
    for host, old in old_entries.items():
        entries.setdefault(host, old)
    return entries, changed, notices


def complete(
    stored: FleetPKI | None,
    fleet: str,
    wanted: Mapping[str, str],
    today: datetime.date,
    front_doors: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[FleetPKI, bool, list[str]]:
    """The CA, a certificate for every service host in ``wanted`` (name -> address) and one for
    every front door in ``front_doors`` (host name -> the host names it serves): stored ones
    reused, missing, renamed or expiring ones issued. Returns (pki, changed, notices)."""
    ca = stored.ca if stored is not None else issue_ca(fleet, today)
    hosts, hosts_changed, notices = _completed(
        ca,
        stored.hosts if stored is not None else {},
        {h: _names(h, a) for h, a in wanted.items()},
        today,
        "certificate",
    )
    doors, doors_changed, door_notices = _completed(
        ca,
        stored.front_doors if stored is not None else {},
        front_doors or {},
        today,
        "front door certificate",
    )
    changed = stored is None or hosts_changed or doors_changed
    return FleetPKI(ca, hosts, doors), changed, notices + door_notices


def write(path: Path, pki: FleetPKI, blueprint_name: str) -> None:
    """Write the CA file atomically with mode 0600 from the start."""
    doc: dict[str, Any] = {
        "ca": pki.ca.to_data(),
        "hosts": {h: pki.hosts[h].to_data() for h in sorted(pki.hosts)},
    }
    if pki.front_doors:
        doc["front_doors"] = {h: pki.front_doors[h].to_data() for h in sorted(pki.front_doors)}

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(doc, Dumper=Dumper, sort_keys=True, default_flow_style=False)
    write_private(path, HEADER.format(blueprint=blueprint_name) + body)


def load_or_create(
    blueprint: Path,
    fleet: str,
    wanted: Mapping[str, str],
    *,
    front_doors: Mapping[str, tuple[str, ...]] | None = None,
    create: bool = True,
    today: datetime.date | None = None,
) -> tuple[FleetPKI | None, bool, list[str], list[Diagnostic]]:
    """The fleet's PKI: read, completed, and written back when anything was issued.

    Returns (pki, changed, notices, diagnostics). With ``create`` False nothing is written,
    and ``changed`` tells whether the file would change."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    path = tls_path(blueprint)
    stored, problems = read(path, today)
    if problems:
        return None, False, [], problems
    pki, changed, notices = complete(stored, fleet, wanted, today, front_doors)
    if changed and create:
        try:
            write(path, pki, blueprint.name)
        except OSError as exc:
            return (
                None,
                True,
                [],
                [
                    error((), f"cannot write the CA file: {exc.strerror or exc}").located(
                        str(path), None, None
                    )
                ],
            )
    return pki, changed, (notices if create else []), []
