"""TLS on the Qdrant and Ollama hops: what the generator writes for them (issue: every hop
encrypted with the fleet CA). Real servers run these files in the services, containers and
boot tiers; here, the data itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BLUEPRINTS, Rendered
from owuibuild import hostconfig
from owuibuild.diagnostics import Severity
from owuibuild.hostconfig import docker, ollama_tls, qdrant, tls
from owuibuild.pipeline import compile_blueprint
from owuibuild.plan import (
    CA_BUNDLE,
    FLEET_CA,
    OLLAMA_PORT,
    QDRANT_PORT,
    SERVER_CERT,
    SERVER_KEY,
    SYSTEM_CA_BUNDLE,
)

pytestmark = pytest.mark.unit

SEED_EXAMPLE = (BLUEPRINTS / "seed-example.yml").read_text()


def user_data_files(rendered: Rendered, host: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in rendered.user_data(host).get("write_files", [])}


def caddy_config(rendered: Rendered, host: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        user_data_files(rendered, host)[ollama_tls.CONFIG]["content"]
    )
    return loaded


@pytest.fixture
def seed(render_example: Callable[[str], Rendered]) -> Rendered:
    return render_example("seed-example.yml")


def test_instances_reach_qdrant_and_ollama_over_https_with_the_ca_bundle(seed: Rendered) -> None:
    plan = seed.plan
    address = plan.shared.host.address  # type: ignore[attr-defined]
    assert plan.qdrant_url == f"https://{address}:{QDRANT_PORT}"  # type: ignore[attr-defined]
    assert plan.ollama_urls == (f"https://{address}:{OLLAMA_PORT}",)  # type: ignore[attr-defined]
    for inst in plan.instances:  # type: ignore[attr-defined]
        env = dict(
            line.split("=", 1)
            for line in seed.text(f"instances/{inst.name}/{inst.name}.env").splitlines()
            if "=" in line and not line.startswith("#")
        )
        assert env["QDRANT_URI"].startswith("https://")
        assert env["OLLAMA_BASE_URL"].startswith("https://")
        assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == CA_BUNDLE
        assert env["ENABLE_QDRANT_MULTITENANCY_MODE"] == "true"


def test_the_ca_bundle_is_made_before_each_instance_starts(seed: Rendered) -> None:
    plan = seed.plan
    host = next(h for h in plan.hosts if h.instances)  # type: ignore[attr-defined]
    written = user_data_files(seed, host.name)
    script = written[tls.BUNDLE_SCRIPT]
    assert script["permissions"] == "0755"
    body = script["content"]
    # the system's CAs first, then the fleet CA; renamed into place
    assert body.index(SYSTEM_CA_BUNDLE) < body.index(FLEET_CA) < body.index("mv -f")
    for inst in host.instances:
        unit = written[f"/etc/systemd/system/{inst.unit_name}"]["content"]
        pre = [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]
        assert f"ExecStartPre=/bin/sh {tls.BUNDLE_SCRIPT}" in pre
        start = unit.index("ExecStart=")
        assert unit.index(tls.BUNDLE_SCRIPT) < start
    parts = hostconfig.parts_for(plan, host, seed.secrets)  # type: ignore[arg-type]
    assert "ca-certificates" in hostconfig.merge(parts)["packages"]
    assert docker.instance_unit(plan, host.instances[0]).count(tls.BUNDLE_SCRIPT) == 1


def test_qdrant_serves_https_with_its_own_copy_of_the_key(seed: Rendered) -> None:
    plan, secrets = seed.plan, seed.secrets
    config = qdrant.config(plan, secrets, plan.shared)  # type: ignore[arg-type, attr-defined]
    assert config["service"]["enable_tls"] is True
    assert config["tls"] == {"cert": SERVER_CERT, "key": qdrant.TLS_KEY, "ca_cert": FLEET_CA}
    part = qdrant.part(plan, plan.shared, secrets)  # type: ignore[arg-type, attr-defined]
    assert part is not None
    copy = ("install", "-o", "qdrant", "-g", "qdrant", "-m", "0600", SERVER_KEY, qdrant.TLS_KEY)
    steps = list(part.configure)
    assert copy in steps
    # the key is in place before Qdrant starts
    assert steps.index(copy) < next(i for i, c in enumerate(steps) if "qdrant.service" in c)


def test_ollama_listens_on_loopback_behind_its_terminator(seed: Rendered) -> None:
    host = seed.plan.shared  # type: ignore[attr-defined]
    config = caddy_config(seed, host.name)
    server = config["apps"]["http"]["servers"]["ollama"]
    assert server["listen"] == [f"{host.host.address}:{OLLAMA_PORT}"]
    assert server["automatic_https"] == {"disable": True}
    (policy,) = server["tls_connection_policies"]
    assert policy["protocol_min"] == "tls1.2"
    (loaded,) = config["apps"]["tls"]["certificates"]["load_files"]
    assert loaded == {"certificate": SERVER_CERT, "key": ollama_tls.TLS_KEY}
    assert config["admin"]["disabled"] is True
    proxy = server["routes"][0]["handle"][0]
    assert proxy["upstreams"] == [{"dial": f"127.0.0.1:{OLLAMA_PORT}"}]
    assert proxy["flush_interval"] == -1  # streamed answers stay streamed
    assert proxy["headers"]["request"]["set"]["Host"] == [f"127.0.0.1:{OLLAMA_PORT}"]
    unit = user_data_files(seed, host.name)["/etc/systemd/system/ollama.service"]["content"]
    assert f'Environment="OLLAMA_HOST=127.0.0.1:{OLLAMA_PORT}"' in unit


def test_only_inference_and_listing_pass_unless_the_blueprint_allows_management(
    seed: Rendered, render_text: Callable[[str], Rendered]
) -> None:
    routes = caddy_config(seed, "ai-shared")["apps"]["http"]["servers"]["ollama"]["routes"]
    allowed, refused = routes
    paths = allowed["match"][0]["path"]
    assert {"/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags"} <= set(
        paths
    )
    assert {"/api/show", "/api/version", "/v1/*"} <= set(paths)
    for closed in ("/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push"):
        assert closed not in paths and not any(
            p.endswith("*") and closed.startswith(p[:-1]) for p in paths
        )
    assert allowed["terminal"] is True
    assert "match" not in refused and refused["handle"][0]["status_code"] == 403
    opened = render_text(
        SEED_EXAMPLE.replace("  ollama:\n", "  ollama:\n    allow_model_management: true\n", 1)
    )
    (route,) = caddy_config(opened, "ai-shared")["apps"]["http"]["servers"]["ollama"]["routes"]
    assert "match" not in route and route["handle"][0]["handler"] == "reverse_proxy"


def test_the_packaged_caddy_never_starts(seed: Rendered) -> None:
    """An empty unit file masks the package's caddy.service (port 80 on every address) before
    the package is installed, in a golden image too; the reload check skips it."""
    plan, secrets = seed.plan, seed.secrets
    parts = hostconfig.parts_for(plan, plan.shared, secrets)  # type: ignore[arg-type, attr-defined]
    masked = user_data_files(seed, "ai-shared")[ollama_tls.PACKAGED_UNIT]
    assert masked["content"] == ""
    steps = hostconfig.install_steps(parts)
    assert ollama_tls.PACKAGED_UNIT in {f.path for f in steps.files}
    assert "caddy.service" not in hostconfig.written_units(parts)
    assert ollama_tls.UNIT_NAME in hostconfig.written_units(parts)
    script = seed.text("packer/scripts/shared-install.sh")
    assert script.index(ollama_tls.PACKAGED_UNIT) < script.index("apt-get --option")


def test_the_terminator_gets_its_own_copy_of_the_key(seed: Rendered) -> None:
    part = ollama_tls.part(seed.plan, seed.plan.shared, seed.secrets)  # type: ignore[arg-type, attr-defined]
    assert part is not None and part.packages == ("caddy",)
    copy = ("install", "-o", "caddy", "-g", "caddy", "-m", "0600", SERVER_KEY, ollama_tls.TLS_KEY)
    assert list(part.configure).index(copy) < len(part.configure) - 1
    assert part.awaited == (ollama_tls.UNIT_NAME,)


def test_the_old_qdrant_tls_setting_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "old.yml"
    path.write_text(
        SEED_EXAMPLE.replace(
            '  qdrant: {version: "1.19.1"}',
            '  qdrant: {version: "1.19.1", tls: {ca_cert: /a.pem, cert: /b.pem, key: /c.pem}}',
        )
    )
    compiled = compile_blueprint(path)
    assert compiled.ok
    (warned,) = [d for d in compiled.diagnostics if d.path == ("shared", "qdrant", "tls")]
    assert warned.severity is Severity.WARNING
    assert "no longer used" in warned.message and warned.hint == "remove tls"
