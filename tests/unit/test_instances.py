"""Instance bundles (compose.yaml + env file) and the Docker host section, checked as data."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from conftest import Rendered
from owuibuild import bundle, hostconfig
from owuibuild.hostconfig import _first_boot as first_boot
from owuibuild.hostconfig import _upgrade as upgrade
from owuibuild.hostconfig import docker as docker_section
from owuibuild.hostconfig import postgres
from owuibuild.plan import CA_BUNDLE, CONTAINER_DATA_DIR, DATA_MOUNT, FLEET_CA, Plan
from owuibuild.quoting import QuotingError

pytestmark = pytest.mark.unit

BLUEPRINT = """\
apiVersion: owuibuild/v1
name: unitfleet
os: {distro: DISTRO, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: shared, address: 10.9.0.10, memory_gb: 64, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.9.0.20, memory_gb: 64, data_volume: {label: owui-data}}
  - {name: web-b, address: 10.9.0.21, memory_gb: 64, data_volume: {label: owui-data}}
openwebui:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
instances:
  - {name: one, host: web-a, port: 3001, url: https://one.example.org,
     env: {WEBUI_NAME: "It's \\"one\\" $HOME #1 \\\\"}}
  - {name: two, host: web-a, port: 3002, public: true, database: {pool_size: 3, max_overflow: 2}}
  - {name: three, host: web-b, port: 3001}
"""


@pytest.fixture
def rendered(render_text: Callable[[str], Rendered]) -> Rendered:
    return render_text(BLUEPRINT.replace("DISTRO", "debian-12"))


def plan_of(r: Rendered) -> Plan:
    assert isinstance(r.plan, Plan)
    return r.plan


def secret_values(r: Rendered) -> list[str]:
    return list(r.secrets.values.values())  # type: ignore[attr-defined]


def compose(r: Rendered, name: str) -> dict[str, Any]:
    doc = yaml.safe_load(r.files[f"instances/{name}/compose.yaml"])
    assert isinstance(doc, dict)
    return doc


def env_lines(r: Rendered, name: str) -> dict[str, str]:
    text = r.text(f"instances/{name}/{name}.env")
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return dict((k, v) for k, v in pairs)


def user_data(r: Rendered, host: str) -> dict[str, Any]:
    doc = r.user_data(host)
    assert isinstance(doc, dict)
    return doc


def written(r: Rendered, host: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in user_data(r, host).get("write_files", [])}


def install_steps_of(r: Rendered, host_name: str) -> hostconfig.InstallSteps:
    """What a golden image of ``host_name`` bakes: its sections' install steps."""
    plan = plan_of(r)
    host = next(h for h in plan.hosts if h.name == host_name)
    return hostconfig.install_steps(hostconfig.parts_for(plan, host, r.secrets))  # type: ignore[arg-type]


# -- bundle files --------------------------------------------------------------------------------


def test_each_instance_gets_compose_and_secret_env_file(rendered: Rendered) -> None:
    for name in ("one", "two", "three"):
        assert f"instances/{name}/compose.yaml" not in rendered.secret_paths
        assert f"instances/{name}/{name}.env" in rendered.secret_paths


def test_compose_holds_no_secret(rendered: Rendered) -> None:
    for name in ("one", "two", "three"):
        text = rendered.text(f"instances/{name}/compose.yaml")
        for value in secret_values(rendered):
            assert value not in text


def test_env_file_holds_the_instance_secrets(rendered: Rendered) -> None:
    env = env_lines(rendered, "one")
    values = rendered.secrets.values  # type: ignore[attr-defined]
    assert env["WEBUI_SECRET_KEY"] == values["instances.one.webui_secret_key"]
    # its own Qdrant token (test_qdrant_access decodes it), never the server's key
    assert env["QDRANT_API_KEY"].count(".") == 2
    assert values["qdrant.api_key"] not in rendered.text("instances/one/one.env")
    assert values["instances.one.db_password"] in env["DATABASE_URL"]
    assert values["instances.one.redis_password"] in env["REDIS_URL"]
    assert values["instances.two.db_password"] not in rendered.text("instances/one/one.env")


def test_compose_service_shape(rendered: Rendered) -> None:
    plan = plan_of(rendered)
    doc = compose(rendered, "one")
    assert doc["name"] == "one"
    service = doc["services"][bundle.SERVICE]
    assert service["image"] == plan.openwebui_image
    assert service["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert service["restart"] == "unless-stopped"
    assert service["env_file"] == ["one.env"]
    assert "/health" in service["healthcheck"]["test"][-1]
    # A slow first start (migrations) must not be marked unhealthy. The real Open WebUI took
    # almost 8 minutes under TCG (boot tier, OWUIBUILD_BOOT_REAL_OPENWEBUI=1).
    assert service["healthcheck"]["start_period"] == "600s"
    assert service["logging"]["driver"] == "json-file"
    assert set(service["logging"]["options"]) == {"max-size", "max-file"}
    assert "environment" not in service


def test_port_is_published_on_the_private_address(rendered: Rendered) -> None:
    (port,) = compose(rendered, "one")["services"][bundle.SERVICE]["ports"]
    assert port == {"target": 8080, "host_ip": "10.9.0.20", "published": "3001", "protocol": "tcp"}


def test_public_instance_is_published_on_all_addresses(rendered: Rendered) -> None:
    (port,) = compose(rendered, "two")["services"][bundle.SERVICE]["ports"]
    assert port["host_ip"] == "0.0.0.0"


def test_data_dir_is_a_named_volume_on_the_data_mount(rendered: Rendered) -> None:
    doc = compose(rendered, "three")
    mount, ca, cas = doc["services"][bundle.SERVICE]["volumes"]
    assert mount == {"type": "volume", "source": bundle.VOLUME, "target": CONTAINER_DATA_DIR}
    # The fleet CA, read-only, at the path the URLs name; the CA bundle SSL_CERT_FILE names.
    assert ca == {"type": "bind", "source": FLEET_CA, "target": FLEET_CA, "read_only": True}
    assert cas == {"type": "bind", "source": CA_BUNDLE, "target": CA_BUNDLE, "read_only": True}
    env = env_lines(rendered, "three")
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == CA_BUNDLE
    opts = doc["volumes"][bundle.VOLUME]["driver_opts"]
    assert opts == {"type": "none", "o": "bind", "device": f"{DATA_MOUNT}/instances/three"}
    assert env_lines(rendered, "three")["DATA_DIR"] == CONTAINER_DATA_DIR


def test_environment_from_the_plan(rendered: Rendered) -> None:
    plan = plan_of(rendered)
    inst = {i.name: i for i in plan.instances}
    env = env_lines(rendered, "three")
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://three:")
    url = urlsplit(env["DATABASE_URL"])
    assert (url.hostname, url.port, url.path) == ("10.9.0.10", 5432, "/three")
    assert dict(parse_qsl(url.query, strict_parsing=True)) == {
        "sslmode": "verify-full",
        "sslrootcert": FLEET_CA,
        # A quiet PostgreSQL host is given up on: see test_a_silent_peer_is_given_up_on.
        "connect_timeout": "5",
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }
    assert env["DATABASE_POOL_SIZE"] == str(inst["three"].db_pool_size)
    assert env["DATABASE_POOL_MAX_OVERFLOW"] == str(inst["three"].db_max_overflow)
    port = inst["three"].redis_port
    assert env["REDIS_URL"].endswith(f"@10.9.0.10:{port}/0?ssl_ca_certs={FLEET_CA}")
    assert env["REDIS_URL"].startswith("rediss://three:")
    assert env["WEBSOCKET_REDIS_URL"] == env["REDIS_URL"]
    assert env["WEBSOCKET_MANAGER"] == "redis"
    assert env["REDIS_KEY_PREFIX"] == "three"
    assert env["VECTOR_DB"] == "qdrant"
    assert env["QDRANT_URI"] == plan.qdrant_url
    assert env["QDRANT_COLLECTION_PREFIX"] == "three"
    assert env["OLLAMA_BASE_URL"] == plan.ollama_url
    assert env["RAG_EMBEDDING_ENGINE"] == "ollama"
    assert env["RAG_EMBEDDING_MODEL"] == plan.fleet.shared.ollama.embedding_model
    assert env["ENABLE_PERSISTENT_CONFIG"] == "false"
    assert env["UVICORN_WORKERS"] == "1"
    assert "WEBUI_URL" not in env


def test_a_silent_peer_is_given_up_on(rendered: Rendered) -> None:
    """Every connection to the shared services has a connect timeout and TCP keep-alive probes
    that give up a host that went quiet (replaced, rebooting) within a minute, and Socket.IO's
    listener keeps no read timeout (it blocks on a read between events)."""
    plan = plan_of(rendered)
    (inst,) = [i for i in plan.instances if i.name == "three"]
    env = dict(bundle.environment(plan, inst, rendered.secrets))  # type: ignore[arg-type]
    assert env["REDIS_SOCKET_CONNECT_TIMEOUT"] == "5"
    assert env["REDIS_SOCKET_KEEPALIVE"] == "true"
    options = json.loads(env["WEBSOCKET_REDIS_OPTIONS"])
    assert {k: v for k, v in options.items() if k != "health_check_interval"} == {
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }
    compose = yaml.safe_load(rendered.text("instances/three/compose.yaml"))
    sysctls = {k: int(v) for k, v in compose["services"]["openwebui"]["sysctls"].items()}
    silent = (
        sysctls["net.ipv4.tcp_keepalive_time"]
        + sysctls["net.ipv4.tcp_keepalive_intvl"] * sysctls["net.ipv4.tcp_keepalive_probes"]
    )
    assert silent <= 60, sysctls
    # Retransmission gives up after about 100 s (RTO from 200 ms, doubling), not 15 minutes.
    assert sysctls["net.ipv4.tcp_retries2"] == 8
    query = dict(parse_qsl(urlsplit(env["DATABASE_URL"]).query))
    pg_silent = int(query["keepalives_idle"]) + int(query["keepalives_interval"]) * int(
        query["keepalives_count"]
    )
    assert pg_silent <= 60 and int(query["tcp_user_timeout"]) <= 60_000, query


# redis-py 8.0.1's own keep-alive on every Redis connection: 30 s idle, then 3 probes 5 s apart.
REDIS_PY_SILENT_SECONDS = 30 + 3 * 5


def test_redis_listeners_health_check_sooner_than_a_silent_redis_is_given_up(
    rendered: Rendered,
) -> None:
    """Every Redis client of the instance (Open WebUI's own, and Socket.IO's from its JSON
    options) pings a connection idle for longer than its health-check interval before reading
    from it again. The interval is shorter than redis-py's keep-alive gives a silent Redis, so a
    Pub/Sub listener whose connection the kernel failed with ETIMEDOUT (which redis-py 8.0.1 on
    Python 3.11 reads as "no message yet", in a loop that never yields) raises at once, and
    connects and subscribes again instead (see owuibuild.bundle)."""
    plan = plan_of(rendered)
    for inst in plan.instances:
        env = dict(bundle.environment(plan, inst, rendered.secrets))  # type: ignore[arg-type]
        own = int(env["REDIS_HEALTH_CHECK_INTERVAL"])
        socketio = json.loads(env["WEBSOCKET_REDIS_OPTIONS"])["health_check_interval"]
        assert isinstance(socketio, int), socketio
        for interval in (own, socketio):
            assert 0 < interval < REDIS_PY_SILENT_SECONDS, (inst.name, interval)


def test_pool_sizes_given_in_the_blueprint(rendered: Rendered) -> None:
    env = env_lines(rendered, "two")
    assert (env["DATABASE_POOL_SIZE"], env["DATABASE_POOL_MAX_OVERFLOW"]) == ("3", "2")


def test_url_and_blueprint_env(rendered: Rendered) -> None:
    env = env_lines(rendered, "one")
    assert env["WEBUI_URL"] == "https://one.example.org"
    assert list(env)[-1] == "WEBUI_NAME"
    assert env["WEBUI_NAME"].startswith('"')


def test_secret_keys_differ_between_instances(rendered: Rendered) -> None:
    keys = {env_lines(rendered, n)["WEBUI_SECRET_KEY"] for n in ("one", "two", "three")}
    assert len(keys) == 3


# -- the admin account and sign-up -----------------------------------------------------------------


def test_every_instance_has_its_own_admin_and_closed_signup_by_default(rendered: Rendered) -> None:
    passwords = set()
    for name in ("one", "two", "three"):
        env = env_lines(rendered, name)
        secret = rendered.secrets[f"instances.{name}.admin_password"]  # type: ignore[index]
        assert env["WEBUI_ADMIN_PASSWORD"] == secret
        assert (env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_NAME"]) == ("admin@localhost", "Admin")
        assert (env["ENABLE_SIGNUP"], env["DEFAULT_USER_ROLE"]) == ("false", "pending")
        passwords.add(secret)
    assert len(passwords) == 3
    runbook = rendered.text("README.md")
    assert "| one | admin@localhost | `instances.one.admin_password` | closed |" in runbook
    assert not any(p in runbook for p in passwords)


def test_instance_admin_and_signup_override_the_fleet_field_by_field(
    render_text: Callable[[str], Rendered],
) -> None:
    text = BLUEPRINT.replace("DISTRO", "debian-13").replace(
        "openwebui:\n",
        "openwebui:\n  admin: {email: Boss@Example.org, name: The Boss}\n"
        "  signup: {enabled: true}\n",
    )
    text = text.replace(
        "{name: three, host: web-b, port: 3001}",
        "{name: three, host: web-b, port: 3001, admin: {name: Third},"
        " signup: {default_role: user}}",
    )
    text = text.replace(
        "database: {pool_size: 3, max_overflow: 2}}",
        "database: {pool_size: 3, max_overflow: 2}, signup: {enabled: false}}",
    )
    r = render_text(text)
    got = {
        n: tuple(env_lines(r, n)[k] for k in ("WEBUI_ADMIN_EMAIL", "WEBUI_ADMIN_NAME",
                                               "ENABLE_SIGNUP", "DEFAULT_USER_ROLE"))
        for n in ("one", "two", "three")
    }  # fmt: skip
    assert got == {
        "one": ("Boss@Example.org", '"The Boss"', "true", "pending"),
        "two": ("Boss@Example.org", '"The Boss"', "false", "pending"),
        "three": ("Boss@Example.org", "Third", "true", "user"),
    }
    assert (
        "| three | Boss@Example.org | `instances.three.admin_password` | open, new accounts user |"
        in r.text("README.md")
    )


def test_only_an_instance_that_opens_signup_is_restarted_once_after_its_first_start(
    render_text: Callable[[str], Rendered],
) -> None:
    text = BLUEPRINT.replace("DISTRO", "debian-13").replace(
        "{name: three, host: web-b, port: 3001}",
        "{name: three, host: web-b, port: 3001, signup: {enabled: true}}",
    )
    r = render_text(text)
    plan = plan_of(r)
    script = docker_section.OPEN_SIGNUP_SCRIPT
    assert script not in written(r, "web-a")
    files = written(r, "web-b")
    assert files[script]["permissions"] == "0755"
    (inst,) = plan.instances_on("web-b")
    unit = files[f"/etc/systemd/system/{inst.unit_name}"]["content"]
    ready, stamp, reopen = [line for line in unit.splitlines() if line.startswith("ExecStartPost=")]
    assert ready.startswith("ExecStartPost=/usr/bin/curl ")  # after the first ready check
    assert f" {upgrade.GUARD_SCRIPT} stamp " in stamp  # the version answered: it owns the data
    assert reopen.split("=", 1)[1].split() == [
        "/bin/sh",
        script,
        f"{inst.data_dir}/{docker_section.SIGNUP_MARKER}",
        f"http://{inst.host.address}:{inst.port}/health",
        docker_section.COMPOSE,
        "-p",
        "three",
        "-f",
        f"{inst.bundle_dir}/compose.yaml",
    ]
    for other in plan.instances_on("web-a"):
        unit = written(r, "web-a")[f"/etc/systemd/system/{other.unit_name}"]["content"]
        assert script not in unit


def test_the_model_fills_what_the_schema_defaults() -> None:
    """DEFAULT_ADMIN and DEFAULT_SIGNUP are the schema's defaults, declared twice on purpose:
    a blueprint that gives only some fields of either gets the rest from the model."""
    from owuibuild.model import DEFAULT_ADMIN, DEFAULT_SIGNUP
    from owuibuild.validate import schema

    props = schema()["properties"]["openwebui"]["properties"]
    assert props["admin"]["default"] == json.loads(json.dumps(DEFAULT_ADMIN.__dict__))
    assert props["signup"]["default"] == json.loads(json.dumps(DEFAULT_SIGNUP.__dict__))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("", ""),
        ("plain-value_1.2:3/4@x", "plain-value_1.2:3/4@x"),
        ("Sales AI", '"Sales AI"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("$HOME and ${X}", '"\\$HOME and \\${X}"'),
        ("ends with \\", '"ends with \\0134"'),
        ("a #comment", '"a #comment"'),
        ("it's", '"it\'s"'),
        ("ünï €", '"ünï €"'),
    ],
)
def test_env_value_quoting(value: str, written: str) -> None:
    assert bundle.env_value(value) == written


def test_env_value_refuses_newlines() -> None:
    with pytest.raises(ValueError):
        bundle.env_value("two\nlines")


# -- Docker host section -------------------------------------------------------------------------


def test_debian_installs_docker_from_its_signed_repository(rendered: Rendered) -> None:
    doc = user_data(rendered, "web-a")
    (source,) = doc["apt"]["sources"].values()
    assert f"signed-by={docker_section.DOCKER_KEYRING}" in source["source"]
    assert "download.docker.com/linux/debian bookworm stable" in source["source"]
    key = written(rendered, "web-a")[docker_section.DOCKER_KEYRING]["content"]
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert {"docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"} <= set(
        doc["packages"]
    )


def test_ubuntu_installs_docker_from_the_archive(render_text: Callable[[str], Rendered]) -> None:
    r = render_text(BLUEPRINT.replace("DISTRO", "ubuntu-24.04"))
    doc = user_data(r, "web-a")
    assert {"docker.io", "docker-compose-v2"} <= set(doc["packages"])
    assert "docker-ce" not in doc["packages"]
    assert "docker" not in doc.get("apt", {}).get("sources", {})
    assert docker_section.DOCKER_KEYRING not in written(r, "web-a")


def test_shared_host_without_instances_gets_no_docker(rendered: Rendered) -> None:
    doc = user_data(rendered, "shared")
    assert "docker-ce" not in doc.get("packages", [])
    assert not any(p.startswith("/opt/owuibuild/") for p in written(rendered, "shared"))


def test_shared_host_with_instances_gets_docker(render_example: Callable[[str], Rendered]) -> None:
    r = render_example("homelab.yml")
    files = written(r, "homelab")
    assert "/opt/owuibuild/family/compose.yaml" in files
    assert "docker.io" in user_data(r, "homelab")["packages"]
    # Its instances start after its shared services are set up: from runcmd, never earlier
    # (its first-boot list only prepares PostgreSQL).
    listing = files[first_boot.LIST]["content"].splitlines()
    assert not any(line.startswith("start ") for line in listing)
    assert f"run /bin/sh {postgres.SETUP_SCRIPT} {postgres.START_ONLY}" in listing


def test_host_embeds_exactly_the_rendered_bundles(rendered: Rendered) -> None:
    files = written(rendered, "web-a")
    for name in ("one", "two"):
        compose_file = files[f"/opt/owuibuild/{name}/compose.yaml"]
        env_file = files[f"/opt/owuibuild/{name}/{name}.env"]
        assert compose_file["content"] == rendered.text(f"instances/{name}/compose.yaml")
        assert env_file["content"] == rendered.text(f"instances/{name}/{name}.env")
        assert env_file["permissions"] == "0600"
        assert env_file["owner"] == "root:root"
    assert "/opt/owuibuild/three/compose.yaml" not in files
    assert "/opt/owuibuild/three/compose.yaml" in written(rendered, "web-b")


def test_one_unit_per_instance(rendered: Rendered) -> None:
    plan = plan_of(rendered)
    files = written(rendered, "web-a")
    runcmd = user_data(rendered, "web-a")["runcmd"]
    for inst in plan.instances_on("web-a"):
        unit = files[f"/etc/systemd/system/{inst.unit_name}"]["content"]
        assert "Requires=docker.service network-online.target" in unit
        assert "After=docker.service network-online.target" in unit
        assert f"RequiresMountsFor={inst.data_dir}" in unit
        compose_path = f"{inst.bundle_dir}/compose.yaml"
        compose = docker_section.COMPOSE
        assert (
            f"ExecStart={compose} -p {inst.name} -f {compose_path} up --detach --remove-orphans\n"
            in unit
        )
        # Started once /health answers on the host's address, asked from the host (no
        # `--wait` on Docker's in-container healthcheck).
        post, stamp = [line for line in unit.splitlines() if line.startswith("ExecStartPost=")]
        assert stamp.startswith(f"ExecStartPost=/bin/sh {upgrade.GUARD_SCRIPT} stamp ")
        assert post.startswith("ExecStartPost=/usr/bin/curl --fail ")
        assert post.endswith(f" http://{inst.host.address}:{inst.port}/health")
        assert "--retry-all-errors" in post.split()
        assert f"ExecStop={compose} -p {inst.name} -f {compose_path} down" in unit
        assert "Restart=on-failure" in unit
        for value in secret_values(rendered):
            assert value not in unit
    # One transaction starts every instance; --no-block: cloud-init need not wait for a pull.
    starts = [c for c in runcmd if c[:2] == ["systemctl", "enable"] and "--no-block" in c]
    assert len(starts) == 1
    assert starts[0][:5] == ["systemctl", "enable", "--no-reload", "--now", "--no-block"]
    assert sorted(starts[0][5:]) == sorted(i.unit_name for i in plan.instances_on("web-a"))


def test_a_golden_image_starts_the_instances_as_soon_as_docker_is_up(rendered: Rendered) -> None:
    """The install steps bake and enable the first-boot unit and its script; the seed lists the
    host's instance units under the digest of the install steps its runcmd runs, so that a
    golden first boot starts them without waiting for cloud-init's last stage."""
    plan = plan_of(rendered)
    steps = install_steps_of(rendered, "web-a")
    baked = {f.path: f for f in steps.files}
    assert first_boot.ENABLE in steps.commands
    unit = baked[first_boot.UNIT].content
    assert "ConditionFirstBoot=yes" in unit and "WantedBy=cloud-init.target" in unit
    assert f"ExecStart=/bin/sh {first_boot.SCRIPT}" in unit
    assert first_boot.SCRIPT in baked and first_boot.LIST not in baked  # the list is the seed's
    listing = written(rendered, "web-a")[first_boot.LIST]["content"]
    install = next(c for c in user_data(rendered, "web-a")["runcmd"] if "owuibuild-install" in c)
    assert f"install-steps {install[-1]}\n" in listing and install[-1] == steps.digest
    starts = [line.split()[1] for line in listing.splitlines() if line.startswith("start ")]
    assert starts == [i.unit_name for i in plan.instances_on("web-a")]
    assert not any(line.startswith("run ") for line in listing.splitlines())
    # The shared host starts no unit this way but prepares and queues PostgreSQL's start.
    shared = written(rendered, "shared")[first_boot.LIST]["content"].splitlines()
    assert [line for line in shared if line.startswith(("run ", "start "))] == [
        f"run /bin/sh {postgres.SETUP_SCRIPT} {postgres.START_ONLY}"
    ]


def run_starter(
    rendered: Rendered, tmp_path: Path, listing: str, stamp: str | None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The baked first-boot script, run on ``listing`` with the root disk's install stamp
    ``stamp`` (None: none) and a recording systemctl; its run and the systemctl calls."""
    list_file = tmp_path / "first-boot-units"
    list_file.write_text(listing)
    stamp_file = tmp_path / "installed"
    if stamp is not None:
        stamp_file.write_text(stamp + "\n")
    script = (
        written(rendered, "web-a")[first_boot.SCRIPT]["content"]
        .replace(f"LIST={first_boot.LIST}\n", f"LIST={list_file}\n")
        .replace(f"STAMP={hostconfig.INSTALLED_STAMP}\n", f"STAMP={stamp_file}\n")
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    return run, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize(
    ("stamp", "started"), [("same", True), ("other", False), (None, False)], ids=str
)
def test_first_boot_starts_only_on_the_disk_baked_from_these_install_steps(
    rendered: Rendered, tmp_path: Path, stamp: str | None, started: bool
) -> None:
    """The baked script, run with a recording systemctl: it queues the listed units only when
    the root disk's install stamp is the digest the seed's list names."""
    listing = written(rendered, "web-a")[first_boot.LIST]["content"]
    digest = next(line.split()[1] for line in listing.splitlines() if line.startswith("install-"))
    on_disk = {"same": digest, "other": "0" * 64, None: None}[stamp]
    run, calls = run_starter(rendered, tmp_path, listing, on_disk)
    assert run.returncode == 0, run.stderr
    units = " ".join(i.unit_name for i in plan_of(rendered).instances_on("web-a"))
    assert calls == ([f"start --no-block -- {units}"] if started else [])
    if not started:
        assert "not baked from the seed's install steps" in run.stdout


def test_first_boot_runs_its_commands_and_goes_on_when_one_fails(
    rendered: Rendered, tmp_path: Path
) -> None:
    """The starter runs each listed command (split into words), logs one that fails and
    still runs the next ones and queues the units: the seed's runcmd reports failures."""
    marker = tmp_path / "ran"
    listing = (
        "install-steps abc\n"
        "run /bin/false\n"
        f"run /usr/bin/touch {marker}\n"
        "start owui-one.service\n"
        "start owui-two.service\n"
    )
    run, calls = run_starter(rendered, tmp_path, listing, "abc")
    assert run.returncode == 0, run.stderr
    assert "first-boot command failed (exit 1): /bin/false" in run.stderr
    assert marker.exists()
    assert calls == ["start --no-block -- owui-one.service owui-two.service"]


def test_first_boot_commands_must_be_plain_words() -> None:
    """The starter splits a listed command into words as the shell does: a word that would
    need quoting (or could glob) is refused at render time, never listed."""
    for word in ("a b", "$(reboot)", "*", "x;y", "it's"):
        with pytest.raises(QuotingError):
            first_boot.listing("0" * 64, [("/bin/sh", word)], [])


def test_docker_leaves_the_firewall_to_the_host(rendered: Rendered) -> None:
    """Docker adds no iptables rules and serves published ports from docker-proxy, so the
    host firewall's input chain is what admits them, per the plan."""
    files = written(rendered, "web-a")
    daemon = json.loads(files[docker_section.DAEMON_CONFIG]["content"])
    assert daemon == {
        "bridge": "none",
        "iptables": False,
        "ip6tables": False,
        "userland-proxy": True,
    }
    ruleset = files["/etc/owuibuild/firewall.nft"]["content"]
    input_chain = ruleset[ruleset.index("chain input") : ruleset.index("chain forward")]
    private = 'ip saddr { 10.9.0.0/24 } tcp dport 3001 accept comment "openwebui-one"'
    public = 'tcp dport 3002 accept comment "openwebui-two"'
    drop = 'tcp dport { 22, 3001 } counter drop comment "other sources"'
    for line in (private, public, drop):
        assert f"        {line}\n" in input_chain, line
    assert input_chain.index(private) < input_chain.index(drop)
    assert not any(p.endswith("owuibuild-docker-ports") for p in files)


def test_containerd_is_baked_without_its_cri_plugin(rendered: Rendered) -> None:
    """containerd's configuration is part of the install steps (a golden image has it when
    containerd first starts) and turns off the CRI plugin, which dockerd does not use; a host
    without Docker does not get it."""
    config = {f.path: f for f in install_steps_of(rendered, "web-a").files}[
        docker_section.CONTAINERD_CONFIG
    ].content
    assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in config
    assert written(rendered, "web-a")[docker_section.CONTAINERD_CONFIG]["content"] == config
    shared = next(h.name for h in plan_of(rendered).hosts if not h.runs_docker)
    baked_on_shared = {f.path for f in install_steps_of(rendered, shared).files}
    assert docker_section.CONTAINERD_CONFIG not in baked_on_shared


def test_only_the_instance_networks_are_forwarded(rendered: Rendered) -> None:
    plan = plan_of(rendered)
    ruleset = written(rendered, "web-a")["/etc/owuibuild/firewall.nft"]["content"]
    nets = "{ " + ", ".join(str(i.docker_subnet) for i in plan.instances_on("web-a")) + " }"
    forward = ruleset[ruleset.index("chain forward") : ruleset.index("chain postrouting")]
    assert "policy drop;" in forward
    assert "fib saddr . iif oif missing drop" in forward
    # Out of their own networks, never into another instance's.
    assert f"ip saddr {nets} ip daddr != {nets} accept" in forward
    assert f"ip saddr {nets} ip daddr != {nets} masquerade" in ruleset
    # web-b's instance is not web-a's to forward; a host without instances forwards nothing.
    other = str(next(iter(plan.instances_on("web-b"))).docker_subnet)
    assert other not in ruleset
    shared = written(rendered, "shared")["/etc/owuibuild/firewall.nft"]["content"]
    assert "chain forward" not in shared and "masquerade" not in shared


def test_env_follows_service_placement(render_text: Callable[[str], Rendered]) -> None:
    text = BLUEPRINT.replace("DISTRO", "debian-12").replace(
        "openwebui:\n",
        "placement: {postgres: web-b, ollama: [shared, web-b]}\nopenwebui:\n",
    )
    r = render_text(text)
    env = env_lines(r, "one")
    assert env["DATABASE_URL"].split("?")[0].endswith("@10.9.0.21:5432/one")
    assert env["OLLAMA_BASE_URL"] == "https://10.9.0.10:11434"
    assert env["OLLAMA_BASE_URLS"] == '"https://10.9.0.10:11434;https://10.9.0.21:11434"'


def test_single_ollama_node_gets_no_url_list(rendered: Rendered) -> None:
    assert "OLLAMA_BASE_URLS" not in env_lines(rendered, "one")


def test_each_container_has_a_fixed_address_on_its_own_network(rendered: Rendered) -> None:
    plan = plan_of(rendered)
    for inst in plan.instances:
        doc = compose(rendered, inst.name)
        networks = doc["services"][bundle.SERVICE]["networks"]
        assert networks == {"default": {"ipv4_address": str(inst.container_address)}}
        (subnet,) = doc["networks"]["default"]["ipam"]["config"]
        assert inst.container_address in IPv4Network(subnet["subnet"])
        # Not the bridge's gateway (the first address), which the host itself holds.
        assert inst.container_address != next(IPv4Network(subnet["subnet"]).hosts())
