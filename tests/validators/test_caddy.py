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
from owuibuild.hostconfig import ollama_tls
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


def terminators(rendered: Rendered) -> dict[str, dict[str, str]]:
    """Every host that runs the terminator: host name -> its write_files contents by path."""
    found = {}
    for path in rendered.files:
        if path.startswith("hosts/") and path.endswith("/user-data"):
            host = path.split("/")[1]
            files = {f["path"]: f["content"] for f in rendered.user_data(host)["write_files"]}
            if ollama_tls.CONFIG in files:
                found[host] = files
    return found


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
