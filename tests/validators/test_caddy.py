"""Validators for Ollama's TLS terminator: `caddy validate` (Caddy from the distribution's
archive, the one the hosts install) on the generated configuration of every host that runs
Ollama, in every example blueprint, as written and with shared.ollama.allow_model_management
turned on.

`caddy validate` loads the certificate and key the configuration names, so each run gets real
files: the host's own generated certificate and key (its user-data's write_files entries for
SERVER_CERT and SERVER_KEY; TLS_KEY is the copy of SERVER_KEY the generated commands make for
caddy) written to a temp dir. In the configuration, parsed as JSON, exactly those two path
values are replaced with the temp files' paths, and the test asserts that each was found and
that nothing else differs. Caddy's home and config directories point at the temp dir too. The
services tier (tests/services/test_ollama_tls.py) runs the configuration unchanged.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BLUEPRINTS, EXAMPLES, Rendered, compile_path, require_tool
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from owuibuild.hostconfig import front_door, ollama_tls
from owuibuild.plan import SERVER_CERT, SERVER_KEY

pytestmark = pytest.mark.validators

# Every example blueprint with a shared host (the hosts of its Ollama nodes run the terminator).
SHARED_EXAMPLES = [
    name for name in EXAMPLES if "shared" in (yaml.safe_load((BLUEPRINTS / name).read_text()) or {})
]
# The names caddytls.SupportedProtocols gives TLS 1.2 and 1.3.
TLS_1_2_OR_LATER = {"tls1.2", "tls1.3"}


def remap(value: Any, mapping: dict[str, str], used: list[str]) -> Any:
    """``value`` with every string equal to a key of ``mapping`` replaced (each use noted)."""
    if isinstance(value, dict):
        return {k: remap(v, mapping, used) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, mapping, used) for v in value]
    if isinstance(value, str) and value in mapping:
        used.append(value)
        return mapping[value]
    return value


def hosts_writing(rendered: Rendered, config: str) -> dict[str, dict[str, str]]:
    """Every host whose user-data writes ``config``: host name -> its write_files by path."""
    found = {}
    for path in rendered.files:
        if path.startswith("hosts/") and path.endswith("/user-data"):
            host = path.split("/")[1]
            files = {f["path"]: f["content"] for f in rendered.user_data(host)["write_files"]}
            if config in files:
                found[host] = files
    return found


def terminators(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Every host that runs the terminator: host name -> its write_files contents by path."""
    return hosts_writing(rendered, ollama_tls.CONFIG)


def render(tmp_path: Path, name: str, allow_model_management: bool) -> Rendered:
    data = yaml.safe_load((BLUEPRINTS / name).read_text())
    if allow_model_management:
        ollama = data["shared"].setdefault("ollama", {})
        assert ollama.get("allow_model_management") is not True, "already on: not a variant"
        ollama["allow_model_management"] = True
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return compile_path(path)


def server(config: str) -> dict[str, Any]:
    """The terminator's one HTTP server in a configuration's JSON text."""
    servers: dict[str, Any] = json.loads(config)["apps"]["http"]["servers"]
    (only,) = servers.values()
    return only  # type: ignore[no-any-return]


def caddy_validate(config: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    return subprocess.run(
        ["caddy", "validate", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=home, timeout=120,
    )  # fmt: skip


def with_files(files: dict[str, str], directory: Path, key: str | None = None) -> Path:
    """The host's generated configuration with its certificate and key paths pointing at temp
    files holding the host's generated certificate and key (``key`` in place of it, if given)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_text(files[SERVER_CERT])
    key_file.write_text(files[SERVER_KEY] if key is None else key)
    key_file.chmod(0o600)
    generated = json.loads(files[ollama_tls.CONFIG])
    used: list[str] = []
    mapping = {SERVER_CERT: str(cert_file), ollama_tls.TLS_KEY: str(key_file)}
    config = remap(generated, mapping, used)
    assert sorted(used) == sorted(mapping), f"paths not in the configuration once each: {used}"
    # Nothing but those two values differs.
    back = {new: old for old, new in mapping.items()}
    assert remap(config, back, []) == generated
    path = directory / "ollama-tls.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.mark.parametrize("allow_model_management", [False, True], ids=["as-written", "managed"])
@pytest.mark.parametrize("name", SHARED_EXAMPLES)
def test_caddy_validates_every_terminator_config(
    tmp_path: Path, name: str, allow_model_management: bool
) -> None:
    require_tool("caddy")
    rendered = render(tmp_path, name, allow_model_management)
    hosts = terminators(rendered)
    assert hosts, f"{name}: no host runs the Ollama terminator"
    plan: Any = rendered.plan
    listening = {server(files[ollama_tls.CONFIG])["listen"][0] for files in hosts.values()}
    # The terminators listen where the instances' OLLAMA_BASE_URL(S) point.
    assert listening == {url.removeprefix("https://") for url in plan.ollama_urls}
    for host, files in hosts.items():
        config = with_files(files, tmp_path / host)
        result = caddy_validate(config, tmp_path / host)
        assert result.returncode == 0, f"{name} {host}:\n{result.stdout}\n{result.stderr}"
        assert "Valid configuration" in result.stdout + result.stderr
        served = server(config.read_text())
        # caddy validate takes a protocol name it does not know without a word (and serves its
        # own default): the names are checked here, against those Caddy knows, 1.2 or later.
        assert {p["protocol_min"] for p in served["tls_connection_policies"]} <= TLS_1_2_OR_LATER
        routes = served["routes"]
        refusing = any(
            h.get("status_code") == 403 for route in routes for h in route.get("handle", [])
        )
        assert refusing is not allow_model_management, routes


@pytest.fixture(scope="module")
def homelab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("homelab")
    shutil.copy(BLUEPRINTS / "homelab.yml", directory / "homelab.yml")
    (files,) = terminators(compile_path(directory / "homelab.yml")).values()
    return directory, files


# The check can fail: caddy validate does load the files and does check the settings.
BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown handler": lambda c: c["apps"]["http"]["servers"]["ollama"]["routes"][0][
        "handle"
    ].append({"handler": "no_such_handler"}),
    # A misspelt key of ours: Caddy decodes module JSON strictly.
    "misspelt key": lambda c: c["apps"]["http"]["servers"]["ollama"]["routes"][0]["handle"][
        0
    ].update(flush_intervall=-1),
    "listen port not a number": lambda c: c["apps"]["http"]["servers"]["ollama"].update(
        listen=["10.9.0.10:ollama"]
    ),
    "missing certificate file": lambda c: c["apps"]["tls"]["certificates"]["load_files"][0].update(
        certificate="/nonexistent/owuibuild/server.crt"
    ),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_caddy_validate_rejects_a_broken_config(
    homelab: tuple[Path, dict[str, str]], tmp_path: Path, breakage: str
) -> None:
    require_tool("caddy")
    _, files = homelab
    config = with_files(files, tmp_path)
    doc = json.loads(config.read_text())
    BROKEN[breakage](doc)
    config.write_text(json.dumps(doc))
    result = caddy_validate(config, tmp_path)
    assert result.returncode != 0, (breakage, result.stdout, result.stderr)


def test_caddy_validate_reads_the_key(homelab: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """An empty key file, or a good key that is not the certificate's, fails validation: the
    temp files are really read and matched."""
    require_tool("caddy")
    _, files = homelab
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for label, key in (("empty", ""), ("another key", other.decode())):
        result = caddy_validate(with_files(files, tmp_path / label, key=key), tmp_path / label)
        assert result.returncode != 0, (label, result.stdout, result.stderr)


# -- the front door ---------------------------------------------------------------------------------
#
# `caddy validate` on the front door configuration of every host that runs instances, in every
# example with a front door as written, and in every example with instances turned into an ACME
# front door (Let's Encrypt's directory; a private directory with its own CA). The files the
# configuration names (certificate, caddy's copy of the key, the ACME directory's CA, the
# storage directory) are the host's generated ones, written to a temp dir, and exactly those
# path values are replaced. ACME configurations are validated without a network (unshare -n):
# validating provisions the issuer but must never dial the CA.

WITH_FRONT_DOOR = [
    name for name in EXAMPLES if "front_door" in (yaml.safe_load((BLUEPRINTS / name).read_text()))
]
WITH_INSTANCES = [
    name for name in EXAMPLES if yaml.safe_load((BLUEPRINTS / name).read_text()).get("instances")
]
DIRECTORY = "https://acme.fleet.test:14000/dir"


def front_doors(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Every host that runs a front door: host name -> its write_files contents by path."""
    return hosts_writing(rendered, front_door.CONFIG)


def acme_variant(tmp_path: Path, name: str, directory_ca: str | None) -> Rendered:
    data = yaml.safe_load((BLUEPRINTS / name).read_text())
    for inst in data["instances"]:
        inst["url"] = f"https://{inst['name']}.fleet-{name.removesuffix('.yml')}.org"
        inst.pop("public", None)
    acme: dict[str, Any] = {"email": "ops@example.org"}
    if directory_ca is not None:
        acme |= {"directory": DIRECTORY, "directory_ca": directory_ca}
    data["front_door"] = {"tls": "acme", "acme": acme, "allow_from": "public"}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return compile_path(path)


def front_door_files(files: dict[str, str], directory: Path) -> Path:
    """The host's generated front door configuration, its file paths pointing at temp copies."""
    directory.mkdir(parents=True, exist_ok=True)
    generated = json.loads(files[front_door.CONFIG])
    mapping = {front_door.STORAGE: str(directory / "storage")}
    if front_door.CERT in files:
        (directory / "front-door.crt").write_text(files[front_door.CERT])
        key = directory / "front-door.key"
        key.write_text(files[front_door.KEY])
        key.chmod(0o600)
        mapping |= {front_door.CERT: str(directory / "front-door.crt"), front_door.CADDY_KEY: str(key)}
    if front_door.ACME_DIRECTORY_CA in files:
        (directory / "acme-ca.crt").write_text(files[front_door.ACME_DIRECTORY_CA])
        mapping[front_door.ACME_DIRECTORY_CA] = str(directory / "acme-ca.crt")
    used: list[str] = []
    config = remap(generated, mapping, used)
    assert sorted(used) == sorted(mapping), f"paths not in the configuration once each: {used}"
    assert remap(config, {new: old for old, new in mapping.items()}, []) == generated
    path = directory / "front-door.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def offline(argv: list[str]) -> list[str]:
    return ["unshare", "--net", *argv] if os.geteuid() == 0 and shutil.which("unshare") else argv


def check_front_door(rendered: Rendered, tmp_path: Path, label: str) -> list[dict[str, Any]]:
    """Validate every front door of a render; return each one's parsed configuration."""
    plan: Any = rendered.plan
    hosts = front_doors(rendered)
    assert set(hosts) == {h.name for h in plan.hosts if h.instances}, label
    configs = []
    for host, files in hosts.items():
        config = front_door_files(files, tmp_path / host)
        home = tmp_path / host
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        result = subprocess.run(
            offline(["caddy", "validate", "--config", str(config)]),
            capture_output=True, text=True, env=env, cwd=home, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, f"{label} {host}:\n{result.stdout}\n{result.stderr}"
        assert "Valid configuration" in result.stdout + result.stderr
        doc = json.loads(files[front_door.CONFIG])
        (served,) = doc["apps"]["http"]["servers"].values()
        host_plan = next(h for h in plan.hosts if h.name == host)
        # HTTPS on the host's private address only; TCP only; TLS 1.2 or later.
        assert served["listen"] == [f"{host_plan.host.address}:443"]
        assert served["protocols"] == ["h1", "h2"]
        assert {p["protocol_min"] for p in served["tls_connection_policies"]} <= TLS_1_2_OR_LATER
        # One site per instance of this host, to where its compose file publishes it.
        *routes, stray = served["routes"]
        assert "match" not in stray and stray["handle"][0]["status_code"] == 421, stray
        sites = {r["match"][0]["host"][0]: r for r in routes}
        assert set(sites) == {i.server_name for i in host_plan.instances}
        for inst in host_plan.instances:
            compose = yaml.safe_load(rendered.text(f"instances/{inst.name}/compose.yaml"))
            (port,) = compose["services"]["openwebui"]["ports"]
            assert port["host_ip"] == "127.0.0.1"
            text = json.dumps(sites[inst.server_name])
            assert f'"dial": "127.0.0.1:{port["published"]}"' in text
        configs.append(doc)
    return configs


@pytest.mark.parametrize("name", WITH_FRONT_DOOR)
def test_caddy_validates_every_front_door_of_the_examples(tmp_path: Path, name: str) -> None:
    require_tool("caddy")
    rendered = compile_path(Path(shutil.copy(BLUEPRINTS / name, tmp_path / name)))
    for doc in check_front_door(rendered, tmp_path, name):
        # tls: internal: the fleet CA's certificate, never ACME
        assert "automation" not in doc["apps"]["tls"]
        assert doc["apps"]["tls"]["certificates"]["load_files"]


@pytest.mark.parametrize("private", [False, True], ids=["lets-encrypt", "private-directory"])
@pytest.mark.parametrize("name", WITH_INSTANCES)
def test_caddy_validates_every_acme_front_door(tmp_path: Path, name: str, private: bool) -> None:
    require_tool("caddy")
    from owuibuild.pki import issue_ca

    directory_ca = issue_ca("acme-test", datetime.date.today()).cert if private else None
    rendered = acme_variant(tmp_path, name, directory_ca)
    for doc in check_front_door(rendered, tmp_path, f"{name} acme"):
        (policy,) = doc["apps"]["tls"]["automation"]["policies"]
        (issuer,) = policy["issuers"]
        assert issuer["module"] == "acme" and issuer["email"] == "ops@example.org"
        assert issuer["ca"] == (DIRECTORY if private else front_door.LETS_ENCRYPT)
        assert ("trusted_roots_pem_files" in issuer) is private
        assert "certificates" not in doc["apps"]["tls"]


def test_caddy_validate_rejects_a_broken_front_door(tmp_path: Path) -> None:
    require_tool("caddy")
    rendered = compile_path(Path(shutil.copy(BLUEPRINTS / "homelab.yml", tmp_path / "homelab.yml")))
    (files,) = front_doors(rendered).values()
    config = front_door_files(files, tmp_path / "ok")
    doc = json.loads(config.read_text())
    (served,) = doc["apps"]["http"]["servers"].values()
    served["routes"][0]["handle"][0]["routes"][1]["match"][0]["header_regexp"]["Content-Length"][
        "pattern"
    ] = "([0-9"
    config.write_text(json.dumps(doc))
    result = caddy_validate(config, tmp_path)
    assert result.returncode != 0, (result.stdout, result.stderr)
