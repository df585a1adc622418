"""Boot tier: a real two-VM Debian 13 fleet, a shared host and a Docker host, booted from their
generated seeds on their golden images and talking over a private network through both
generated firewalls (network and test doubles: tests/boot/fleet_vm.py).

One fleet boots once and every test of this module shares it, in order:

1. both hosts boot at once from the golden images that ``owuibuild bake`` made with Packer
   (tests/boot/golden.py; CI bakes them while the pure tiers run), on empty data volumes, with
   an uplink that lets nothing out: cloud-init clean, nothing installed, fetched or pulled, the
   baked models copied onto the data volume, both instances healthy;
2. instance isolation and both firewalls, probed inside the guests; the Docker host serves
   its instances through its front door (Caddy, HTTPS on 443 with the fleet CA's certificate
   for each instance's host name, HTTP on 80 redirected; the instances' own ports on loopback
   only), to the fleet network only, each name to its own instance and no other name to any;
   every hop is TLS: Qdrant serves HTTPS only, Ollama listens on loopback behind its Caddy
   terminator (HTTPS only, model management refused with 403); Qdrant's collections were made
   at first boot with the configured vector size, and each instance used only its own
   collections with its own token (the Qdrant double's log of decoded claims); a capture of
   the fleet link (tcpdump on the loopback ports that carry it, from before the guests start
   until both instances have started again and every credential and a test prompt sent
   through the front door to an instance have crossed it) holds TLS handshakes on every hop
   and no secret, token or prompt in clear text;
3. a reboot of the Docker host brings every instance back, behind its front door (the shared
   host's reboot is the Debian 12 module's, opt-in: CI's budget holds one);
4. the Docker host replaced by a new root disk (the golden image again, same seed, same data
   volume): each instance's data directory survives, and the front door serves them again.
   Replacing the shared host (cluster, rows, Redis keys) is the Debian 12 module's test,
   opt-in with the other plain-image boots: CI's 60 minutes do not hold a second boot of both
   hosts;
5. seeds re-applied live: instance gamma added to the blueprint, and each host's new seed.iso
   put in its CD-ROM drive through QEMU's monitor (blockdev-change-medium), as Proxmox or
   libvirt would: each host's converge verifies and applies it, gamma comes up healthy, and
   alpha, asked through the front door once a second the whole time, never fails and keeps its
   container, PostgreSQL server and Redis server. Gamma removed again the same way: stopped,
   its files and logins gone, its data kept. Then seeds each host must refuse (an older
   generation, another fleet's key, a change only a new host can take) change nothing.

The same seeds on the plain Debian 13 base image (cloud-init installs every package at first
boot) are booted by tests/boot/test_fleet_vanilla.py, opt-in (OWUIBUILD_BOOT_VANILLA=1):
a vanilla first boot installs what the bake installed, and CI's 60 minutes do not hold both.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import fleet_capture as capture
import pytest
from fleet_blueprint import (
    EMBEDDING_DIMENSIONS,
    FLEET_DOMAIN,
    FLEET_INTERFACE,
    assert_cloud_init_clean,
    bench_path,
    empty_disk,
    tcp_listeners,
)
from fleet_vm import (
    ADMIN,
    ALL_CHECKS_OK,
    BOOT_TIMEOUT,
    CROSS_CREDENTIALS,
    DATA_DEVICE,
    DOCK,
    DOCK_ADDRESS,
    DOCK_MEMORY_MB,
    HEALTH_PATHS,
    HOST_NAMES,
    IN_USE,
    INSTANCES,
    MODELS_DIR,
    OUTSIDER,
    QDRANT_DOUBLE_LOG,
    REAL_OPENWEBUI,
    SHARED,
    SHARED_ADDRESS,
    Fleet,
    apt_changes_since_boot,
    cross_credentials,
    docker_from_the_archive,
    door,
    door_url,
    drop_count,
    front_door_serves,
    guest_probe,
    http_status,
    instance_checks,
    instance_health,
    instance_log,
    instance_url,
    instances_in_use,
    named,
    ollama_pulls,
    ollama_requests,
    pg_major,
    pg_request,
    redis_request,
    start_fleet,
    wait_fleet_ready,
    wait_instances_healthy,
    web,
)
from infra.recovery import record
from infra.vm import VM, FleetLink
from owuibuild import bundle, qdrant_access
from owuibuild.hostconfig import _first_boot as first_boot
from owuibuild.hostconfig import firewall, front_door, ollama_tls, postgres, prometheus
from owuibuild.hostconfig import qdrant as qdrant_section
from owuibuild.plan import (
    DATA_MOUNT,
    FLEET_CA,
    HTTP_PORT,
    HTTPS_PORT,
    LOOPBACK,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    POSTGRES_EXPORTER_PORT,
    POSTGRES_PORT,
    PROMETHEUS_PORT,
    QDRANT_PORT,
    REDIS_DATA_ROOT,
    REDIS_EXPORTER_PORT,
)

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def booted(
    fleet: Fleet,
    mirror: Any,
    baked_shared: Any,
    baked_instance_host: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Both VMs booted in parallel from their golden images, with empty data volumes and no
    way out of their uplink; cloud-init clean, instances healthy. Yields the VMs (a test that
    replaces the hosts puts the new VMs here) and what the tests share."""
    disks = {
        h: empty_disk(tmp_path_factory.mktemp(f"data-{h}") / "data.qcow2") for h in (SHARED, DOCK)
    }
    a, b = FleetLink.pair()
    links = {SHARED: a, DOCK: b}
    images = {SHARED: baked_shared.boot_image(), DOCK: baked_instance_host.boot_image()}
    fetched = len(mirror.requests)
    # The real Open WebUI's boots are rows of their own, not the bench's golden rows.
    label = "golden-real-openwebui" if REAL_OPENWEBUI else "golden"
    # The wire between the hosts is recorded from before either guest starts, so the capture
    # holds the first boot's connections too (test_capture_between_the_hosts_...).
    from conftest import require_tool

    require_tool("tcpdump")
    link_capture = capture.LinkCapture(
        tmp_path_factory.mktemp("capture") / "fleet-link.pcap", (a.local_port, b.local_port)
    ).start()
    state: dict[str, Any] = {"disks": disks, "links": links, "images": images}
    state["capture"] = link_capture
    try:
        state["vms"] = vms = start_fleet(fleet, images, disks, links, label, restrict=True)
    except BaseException:
        link_capture.stop()
        raise
    try:
        state["statuses"] = wait_fleet_ready(vms, fleet, label)
        state["fetched"] = mirror.requests[fetched:]
        yield state
    finally:
        link_capture.stop()
        for vm in state["vms"].values():
            vm.close()


# -- the tests -----------------------------------------------------------------------------------


def test_fleet_boots_and_instances_are_healthy(booted: dict[str, Any], fleet: Fleet) -> None:
    for status in booted["statuses"].values():
        assert status.status == "done" and not status.errors
    dock = booted["vms"][DOCK]
    docker_from_the_archive(dock)
    assert all(h == "active healthy" for h in instance_health(dock, fleet).values())
    # Debian 13's engine (26) takes the healthcheck's start interval that compose 2.26 sent.
    intervals = dock.ssh(
        "sudo docker inspect --format '{{.Config.Healthcheck.StartInterval}}'"
        " $(sudo docker ps -q --filter label=com.docker.compose.service=openwebui)",
        check=True,
    ).stdout.split()
    assert intervals == [bundle.START_INTERVAL] * len(INSTANCES), intervals
    if REAL_OPENWEBUI:
        print(f"real Open WebUI healthy on the Docker host after {dock.uptime():.0f} s")
    # The double got healthy only by using every connection its env file names.
    assert instances_in_use(dock) == IN_USE


def test_golden_hosts_install_fetch_and_pull_nothing(booted: dict[str, Any], fleet: Fleet) -> None:
    vms = booted["vms"]
    for host, vm in vms.items():
        # Nothing installed in this boot: the image had it all, and apt never ran.
        assert apt_changes_since_boot(vm) == [], host
        output = vm.ssh("sudo cat /var/log/cloud-init-output.log", check=True).stdout
        assert not re.search(r"^(Hit|Get|Ign):\d+ ", output, re.M), f"apt-get update on {host}"
        assert "owuibuild: installed" not in output, host
        # The seed's install steps are the ones the bake ran and recorded: skipped, not redone.
        assert "owuibuild: this root disk ran these install steps already" in output, host
        assert "is already installed" not in output and "is already present" not in output, host
    assert booted["fetched"] == [], "a golden host fetched from the mirror"
    # The image the instances run was baked in: nothing pulled it (the uplink lets nothing out).
    images = vms[DOCK].ssh("sudo docker image ls --format '{{.Repository}}:{{.Tag}}'", check=True)
    assert fleet.plan.openwebui_image in images.stdout.split(), images.stdout
    # The data volume was empty: the models oneshot copies the baked models onto it without
    # blocking the boot. Wait until they are there...
    library = f"{MODELS_DIR}/manifests/registry.ollama.ai/library"
    found = (
        vms[SHARED]
        .ssh(
            f"sudo timeout 600 sh -c 'until test -e {library}/tinyllama; do sleep 3; done'"
            f" && sudo ls {library}",
            timeout=660,
        )
        .stdout
    )
    assert "tinyllama" in found.split(), found
    # ...copied, not pulled: the Ollama double counts the pulls it served.
    assert ollama_pulls(vms[SHARED]) == 0


def started_at(vm: VM, unit: str, when: str = "ExecMainStartTimestampMonotonic") -> int:
    """Microseconds since the guest's boot when ``unit``'s main process started (or, with
    ``when="ExecMainExitTimestampMonotonic"``, exited); 0 where it never did."""
    value = vm.ssh(f"systemctl show --property={when} --value {unit}", check=True).stdout
    return int(value.strip() or 0)


def test_golden_hosts_load_their_firewall_before_ssh_and_docker(booted: dict[str, Any]) -> None:
    """At a golden image's first boot the host firewall is up as soon as cloud-init has
    written its ruleset: before sshd (and, on the Docker host, dockerd) starts, not in runcmd."""
    for host, vm in booted["vms"].items():
        shown = vm.ssh(
            f"systemctl show --property=ConditionResult,Result {firewall.FIRST_BOOT_UNIT_NAME}",
            check=True,
        ).stdout
        state = dict(line.split("=", 1) for line in shown.split())
        assert state == {"Result": "success", "ConditionResult": "yes"}, (host, shown)
        loaded = started_at(vm, firewall.FIRST_BOOT_UNIT_NAME, "ExecMainExitTimestampMonotonic")
        assert loaded > 0, host
        later = ["ssh.service"] + (["docker.service"] if host == DOCK else [])
        for unit in later:
            assert started_at(vm, unit) > loaded, f"{unit} started before the firewall on {host}"


def test_golden_docker_host_starts_its_instances_from_its_first_boot_unit(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """At the golden image's first boot its baked unit queued the instances' starts (the root
    disk ran the seed's install steps), so they started once dockerd was up, not in runcmd:
    each instance began after that unit started and after dockerd was up."""
    dock = booted["vms"][DOCK]
    shown = dock.ssh(
        f"systemctl show --property=ConditionResult,Result {first_boot.UNIT_NAME}", check=True
    ).stdout
    assert dict(line.split("=", 1) for line in shown.split()) == {
        "Result": "success",
        "ConditionResult": "yes",
    }, shown
    said = dock.ssh(f"sudo journalctl -b --no-pager -o cat -u {first_boot.UNIT_NAME}", check=True)
    assert "not baked from the seed's install steps" not in said.stdout, said.stdout
    queued = started_at(dock, first_boot.UNIT_NAME)
    docker_up = started_at(dock, "docker.service", "ActiveEnterTimestampMonotonic")
    for name in INSTANCES:
        unit = fleet.instance(name).unit_name
        began = started_at(dock, unit, "InactiveExitTimestampMonotonic")
        assert queued < began and docker_up <= began, (unit, queued, docker_up, began)


def test_golden_shared_host_starts_postgresql_from_its_first_boot_unit(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """At the golden shared host's first boot the baked unit prepared the cluster on the data
    volume and queued PostgreSQL's start right after cloud-init's network stage, not waiting
    for cloud-init's last stage (runcmd), which still applied init.sql (the instances' logins
    work: test_credentials_are_refused_across_instances)."""
    shared = booted["vms"][SHARED]
    unit = f"postgresql@{pg_major(fleet)}-main.service"
    said = shared.ssh(f"sudo journalctl -b --no-pager -o cat -u {first_boot.UNIT_NAME}", check=True)
    assert f"queued the start of {unit}" in said.stdout, said.stdout
    assert "not baked" not in said.stdout and "failed" not in said.stdout, said.stdout
    ran = started_at(shared, first_boot.UNIT_NAME)
    done = started_at(shared, first_boot.UNIT_NAME, "ExecMainExitTimestampMonotonic")
    began = started_at(shared, unit, "InactiveExitTimestampMonotonic")
    # Started by that unit's queued job (within moments of its exit), not by runcmd later.
    assert 0 < ran < began <= done + 2_000_000, (ran, began, done)


def test_golden_shared_host_leaves_postgresqls_own_backup_units_off(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """The first boot of a golden image applies the unit presets; PostgreSQL's own backup units
    (WAL archiving, weekly dumps onto the root disk) must not come on with them."""
    shared = booted["vms"][SHARED]
    cluster = f"{pg_major(fleet)}-main"
    for unit in postgres.PACKAGE_BACKUP_UNITS:
        name = unit.replace("@.", f"@{cluster}.")
        state = shared.ssh(f"systemctl is-enabled {name}").stdout.strip()
        assert state == "disabled", (name, state)
    ran = started_at(shared, f"pg_receivewal@{cluster}.service")
    assert ran == 0, "pg_receivewal started"


def qdrant_log(shared: VM) -> list[dict[str, Any]]:
    """The Qdrant double's request log (decoded claims, never a key or a token)."""
    text = shared.ssh(f"sudo cat {QDRANT_DOUBLE_LOG}", check=True, timeout=60).stdout
    return [json.loads(line) for line in text.splitlines()]


def qdrant_admin(shared: VM, path: str) -> Any:
    """GET ``path`` from Qdrant on the shared host with its API key, read by curl from the
    collections unit's header file (the key on no command line); the answer's result."""
    answer = shared.ssh(
        f"sudo curl -sf --cacert {FLEET_CA} --header @{qdrant_section.KEY_FILE}"
        f" https://{SHARED_ADDRESS}:{QDRANT_PORT}{path}",
        check=True,
        timeout=60,
    )
    return json.loads(answer.stdout)["result"]


def test_qdrant_collections_are_made_at_first_boot_with_the_configured_size(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """The first Qdrant node's collections unit made every instance's five collections with
    the blueprint's embedding_dimensions and Open WebUI's three payload indexes."""
    shared = booted["vms"][SHARED]
    unit = qdrant_section.COLLECTIONS_UNIT_NAME
    state = shared.ssh(f"systemctl show -p ActiveState -p Result {unit}", check=True)
    assert sorted(state.stdout.split()) == ["ActiveState=active", "Result=success"], state.stdout
    size = fleet.plan.embedding_dimensions
    assert size == EMBEDDING_DIMENSIONS
    wanted = sorted(c for name in INSTANCES for c in fleet.instance(name).qdrant_collections)
    listed = qdrant_admin(shared, "/collections")["collections"]
    assert sorted(c["name"] for c in listed) == wanted
    for name in wanted:
        info = qdrant_admin(shared, f"/collections/{name}")
        assert info["config"]["params"]["vectors"]["size"] == size, (name, info)
        assert info["config"]["params"]["vectors"]["distance"] == "Cosine", (name, info)
        assert set(info["payload_schema"]) == {i["field_name"] for i in qdrant_access.INDEXES}
    made = shared.ssh(f"sudo journalctl -b -u {unit} --no-pager -o cat", check=True, timeout=60)
    assert sorted(re.findall(r"made Qdrant collection (\S+)", made.stdout)) == wanted, made.stdout


def test_instances_use_qdrant_with_their_own_tokens_only(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """Every Qdrant request from the Docker host carried an instance's token, whose decoded
    claims are exactly qdrant_access.claims of that instance's collections, and touched only
    those collections; each instance wrote its embedding (the collections' size) to its own
    knowledge collection. The server's key was used by the collections unit on the shared host
    only."""
    shared = booted["vms"][SHARED]
    log = qdrant_log(shared)
    own = {
        name: qdrant_access.claims(fleet.instance(name).qdrant_collections) for name in INSTANCES
    }
    from_dock = [e for e in log if e["client"] == DOCK_ADDRESS and e["path"] not in HEALTH_PATHS]
    assert from_dock, log
    assert {e["auth"] for e in from_dock} == {"jwt"}, from_dock
    assert {e["status"] for e in from_dock} == {200}, [e for e in from_dock if e["status"] != 200]
    seen = sorted(
        {(e["claims"]["access"][0]["collection"], e["method"], e["path"]) for e in from_dock}
    )
    for name, claims in own.items():
        mine = [e for e in from_dock if e["claims"] == claims]
        assert mine, (name, claims, seen)
        collections = fleet.instance(name).qdrant_collections
        touched = {e["path"].split("?")[0].split("/")[2] for e in mine}
        assert touched == set(collections), (name, touched)
        knowledge = next(c for c in collections if c.endswith("_knowledge"))
        assert any(
            e["method"] == "PUT" and e["path"].startswith(f"/collections/{knowledge}/points")
            for e in mine
        ), name
        assert qdrant_admin(shared, f"/collections/{knowledge}")["points_count"] == 1, name
    # Nothing else came with a token: every token the log decoded was an instance's, or the
    # read-only one Prometheus scrapes /metrics with, from the shared host, for /metrics only.
    monitor = {"access": "r", "exp": qdrant_access.EXPIRY}
    scrapes = [e for e in log if e["auth"] == "jwt" and e["claims"] == monitor]
    assert scrapes, "Prometheus never scraped Qdrant"
    assert {(e["client"], e["path"], e["status"]) for e in scrapes} == {
        (SHARED_ADDRESS, "/metrics", 200)
    }, scrapes
    assert all(e["claims"] in own.values() for e in log if e["auth"] == "jwt" and e not in scrapes)
    keyed = [e for e in log if e["auth"] == "api-key"]
    assert keyed and {e["client"] for e in keyed} == {SHARED_ADDRESS}, keyed
    # The standin says so too: five collections and a point of the collections' size.
    dock = booted["vms"][DOCK]
    for name in INSTANCES:
        checks = instance_checks(dock, name)
        knowledge = next(
            c for c in fleet.instance(name).qdrant_collections if c.endswith("_knowledge")
        )
        assert checks["qdrant"] == {
            "ok": True,
            "detail": f"5 collections; a {EMBEDDING_DIMENSIONS}-dimension point written to "
            f"{knowledge}",
        }, checks


def test_ollama_answers_only_through_its_tls_terminator(booted: dict[str, Any]) -> None:
    """Ollama listens on the shared host's loopback only; on the private address its port is
    Caddy's, HTTPS only with the fleet CA's certificate, and it refuses model management (no
    allow_model_management in the blueprint) before Ollama sees the request."""
    shared, dock = booted["vms"][SHARED], booted["vms"][DOCK]
    assert tcp_listeners(shared, OLLAMA_PORT) == {
        f"127.0.0.1:{OLLAMA_PORT}": "ollama.service",
        f"{SHARED_ADDRESS}:{OLLAMA_PORT}": ollama_tls.UNIT_NAME,
    }
    pulls = ollama_pulls(shared)
    model = json.dumps({"model": "tinyllama"})
    result = guest_probe(
        dock,
        {
            "cafile": FLEET_CA,
            "http": {
                "tags": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/tags"),
                "version": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/version"),
                # The fleet CA is no public CA: the system's store alone does not verify it.
                "system-cas": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/tags", tls="system"),
                # Plain HTTP: Caddy's 400 ("Client sent an HTTP request to an HTTPS server").
                "plain": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/tags", tls="plain"),
                "pull": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/pull", method="POST", body=model),
                "delete": web(
                    SHARED_ADDRESS, OLLAMA_PORT, "/api/delete", method="DELETE", body=model
                ),
                "double-pulls": web(SHARED_ADDRESS, OLLAMA_PORT, "/api/double/pulls"),
            },
        },
    )
    assert result == {
        "tags": 200,
        "version": 200,
        "system-cas": "certificate-refused",
        "plain": 400,
        "pull": 403,
        "delete": 403,
        "double-pulls": 403,
    }, result
    assert ollama_pulls(shared) == pulls, "a pull through the terminator reached Ollama"


def test_qdrant_speaks_https_only(booted: dict[str, Any], fleet: Fleet) -> None:
    """Qdrant on the private address: HTTPS with the fleet CA's certificate, the API key still
    required; plain HTTP gets no answer (the probe sends no key: it would cross in clear)."""
    dock = booted["vms"][DOCK]
    key = fleet.secrets[fleet.plan.qdrant_api_key.name]
    result = guest_probe(
        dock,
        {
            "cafile": FLEET_CA,
            "http": {
                "keyed": web(SHARED_ADDRESS, QDRANT_PORT, "/collections", headers={"api-key": key}),
                "no-key": web(SHARED_ADDRESS, QDRANT_PORT, "/collections"),
                "ready": web(SHARED_ADDRESS, QDRANT_PORT, "/readyz"),
                "system-cas": web(SHARED_ADDRESS, QDRANT_PORT, "/readyz", tls="system"),
                "plain": web(SHARED_ADDRESS, QDRANT_PORT, "/readyz", tls="plain"),
            },
        },
    )
    plain = result.pop("plain")
    assert result == {
        "keyed": 200,
        "no-key": 401,
        "ready": 200,
        "system-cas": "certificate-refused",
    }
    assert not isinstance(plain, int), f"Qdrant answered plain HTTP with {plain}"


def test_capture_between_the_hosts_holds_no_secret_in_clear_text(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """The capture of the fleet link, running since before either guest started: both first
    boots, with every instance's first connections (PostgreSQL, its Redis, Qdrant with its
    token, Ollama), then once more every instance's credentials, Qdrant's key and a test
    prompt sent from the shared host through the Docker host's front door to an instance, and
    by it to Ollama. The capture holds answered TLS handshakes from the Docker host to every
    service port (PostgreSQL, each Redis, Qdrant, Ollama's terminator) and from the shared host
    to the front door, and none of the secrets, tokens nor the prompt as clear text; a marker
    sent on purpose over the one plain-HTTP hop (the front door's port 80, which only
    redirects) is there, so the search does find clear text."""
    shared, dock = booted["vms"][SHARED], booted["vms"][DOCK]
    link_capture: capture.LinkCapture = booted["capture"]
    prompt = f"owuibuild capture test prompt {pysecrets.token_hex(12)}"
    control = f"owuibuild-capture-control-{pysecrets.token_hex(12)}"
    secrets = dict(fleet.secrets)
    # Long enough that none could turn up in the capture's bytes by chance.
    assert secrets and min(len(v) for v in secrets.values()) >= 16, sorted(secrets)
    server_key = secrets[fleet.plan.qdrant_api_key.name]
    tokens = {
        f"qdrant token of {name}": qdrant_access.token(
            server_key, fleet.instance(name).qdrant_collections
        )
        for name in INSTANCES
    }
    requests: dict[str, Any] = {"cafile": FLEET_CA, "pg": {}, "redis": {}}
    for name in INSTANCES:
        inst = fleet.instance(name)
        requests["pg"][f"pg-{name}"] = pg_request(
            inst, inst.db_name, secrets[inst.db_password.name]
        )
        requests["redis"][f"redis-{name}"] = redis_request(
            inst, inst.redis_port, secrets[inst.redis_password.name]
        )
    requests["http"] = {
        "qdrant": web(SHARED_ADDRESS, QDRANT_PORT, "/collections", headers={"api-key": server_key}),
    }

    assert instances_in_use(dock) == IN_USE
    traffic = guest_probe(dock, requests)
    # The prompt to instance alpha as a browser on the fleet network sends it: from the shared
    # host through the front door, so that it crosses the fleet link twice, inside the front
    # door's TLS and inside the instance's connection to Ollama's terminator.
    chat = {
        "model": "tinyllama",
        "stream": False,
        "messages": [{"role": "user", "content": prompt}],
    }
    relayed = shared.ssh(
        f"curl -s --max-time 60 -w '\\n%{{http_code}}' -H 'Content-Type: application/json'"
        f" --data-binary @- {door_url('alpha', '/ollama/api/chat')}",
        input=json.dumps(chat),
        check=True,
        timeout=120,
    ).stdout
    # Plain HTTP reaches the front door's redirect only: the control crosses in clear text.
    control_status = http_status(shared, door_url("alpha", f"/{control}", scheme="http"))
    data = link_capture.stop()
    keep = bench_path().parent / "capture" / "fleet-link.pcap"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(data)  # for a look with tcpdump -r; holds no secret (asserted below)

    # The traffic went where it should: logins accepted, the prompt answered by Ollama.
    assert traffic["qdrant"] == 200, traffic
    assert {traffic[f"{s}-{n}"] for s in ("pg", "redis") for n in INSTANCES} == {"ok"}, traffic
    body, _, status = relayed.rpartition("\n")
    assert status == "200", relayed
    assert json.loads(body)["message"]["role"] == "assistant", body
    chats = ollama_requests(shared, "/api/chat")
    assert chats and chats[-1]["status"] == 200, chats
    assert control_status == "308", "the front door did not redirect the control request"

    # The capture saw the wire between the hosts: a TLS handshake, answered, on every hop.
    links = booted["links"]
    found = capture.segments(
        capture.link_frames(data, (links[SHARED].local_port, links[DOCK].local_port))
    )
    handshakes = capture.tls_handshakes(found, SHARED_ADDRESS)
    ports = {
        "postgres": POSTGRES_PORT,
        "qdrant": QDRANT_PORT,
        "ollama": OLLAMA_PORT,
        **{f"redis-{n}": fleet.instance(n).redis_port for n in INSTANCES},
    }
    for hop, port in ports.items():
        hellos = handshakes.get(port, (0, 0))
        assert hellos[0] > 0 and hellos[1] > 0, (hop, port, handshakes)
        assert capture.opened_ports(found, SHARED_ADDRESS, client=DOCK_ADDRESS).get(port), hop
    # The prompt's first hop: the shared host to the Docker host's front door, over TLS.
    door_hellos = capture.tls_handshakes(found, DOCK_ADDRESS).get(HTTPS_PORT, (0, 0))
    assert door_hellos[0] > 0 and door_hellos[1] > 0, door_hellos
    assert capture.opened_ports(found, DOCK_ADDRESS, client=SHARED_ADDRESS).get(HTTPS_PORT)
    # The check can fail: clear text sent on purpose is found.
    assert capture.clear_text_found(data, {"control": control}, found) == ["control"]
    # No secret, token or prompt crossed the wire as clear text.
    leaked = capture.clear_text_found(data, {**secrets, **tokens, "test prompt": prompt}, found)
    assert leaked == [], f"in clear text on the fleet link: {leaked}"


# After the capture test: its probe sends alpha's credentials in plain text on purpose (to see
# them refused), which the capture would rightly find.
def test_credentials_are_refused_across_instances(booted: dict[str, Any], fleet: Fleet) -> None:
    result = cross_credentials(booted["vms"][DOCK], fleet)
    assert result == CROSS_CREDENTIALS, result


def test_shared_firewall_drops_ports_outside_the_plan(booted: dict[str, Any]) -> None:
    dock = booted["vms"][DOCK]
    result = guest_probe(
        dock,
        {
            "tcp": {
                "postgres": (SHARED_ADDRESS, 5432),
                "ssh": (SHARED_ADDRESS, 22),
                "unused": (SHARED_ADDRESS, 9),
            }
        },
    )
    # In the plan: open. SSH (only from admin.allow_from) and an unused port: dropped, so the
    # connection times out instead of being refused.
    assert result == {"postgres": "open", "ssh": "timeout", "unused": "timeout"}, result
    # Monitoring: the exporters answer the monitoring host (the shared host) alone, and
    # Prometheus the admins' networks alone; the Docker host is neither.
    shared = booted["vms"][SHARED]
    result = guest_probe(
        dock,
        {
            "tcp": {
                "prometheus": (SHARED_ADDRESS, PROMETHEUS_PORT),
                "node": (SHARED_ADDRESS, NODE_EXPORTER_PORT),
                "postgres-exporter": (SHARED_ADDRESS, POSTGRES_EXPORTER_PORT),
                "redis-exporter": (SHARED_ADDRESS, REDIS_EXPORTER_PORT),
            }
        },
    )
    assert set(result.values()) == {"timeout"}, result
    result = guest_probe(shared, {"tcp": {"node": (DOCK_ADDRESS, NODE_EXPORTER_PORT)}})
    assert result == {"node": "open"}, result


def test_instance_ports_answer_only_on_loopback_and_the_front_door_on_the_private_address(
    booted: dict[str, Any],
) -> None:
    """Behind the front door each instance publishes its port on the Docker host's loopback
    only: it answers there, and not on the private address (refused on the host itself,
    dropped from the other host), nor through the uplink. The front door's ports, 443 and 80,
    answer on the private address to the fleet network, and to nothing outside it."""
    dock, shared = booted["vms"][DOCK], booted["vms"][SHARED]
    for name, port in INSTANCES.items():
        # docker-proxy (a child of dockerd, in its unit) listens on loopback alone.
        assert tcp_listeners(dock, port) == {f"{LOOPBACK}:{port}": "docker.service"}, name
        assert http_status(dock, instance_url(name, "/health")) == "200", name
    port = INSTANCES["alpha"]
    on_host = guest_probe(dock, {"tcp": {"private": (DOCK_ADDRESS, port)}})
    assert on_host == {"private": "refused"}, on_host
    # From the other host of the fleet network: the instance port is no longer in the
    # firewall's plan (dropped: the connection times out); the front door's ports are open.
    from_shared = guest_probe(
        shared,
        {
            "tcp": {
                "instance": (DOCK_ADDRESS, port),
                "https": (DOCK_ADDRESS, HTTPS_PORT),
                "http": (DOCK_ADDRESS, HTTP_PORT),
            }
        },
    )
    assert from_shared == {"instance": "timeout", "https": "open", "http": "open"}, from_shared
    # Caddy's unit listens on the private address, on 443 and (its redirects) on 80.
    for door_port in (HTTPS_PORT, HTTP_PORT):
        listeners = tcp_listeners(dock, door_port)
        assert listeners == {f"{DOCK_ADDRESS}:{door_port}": front_door.UNIT_NAME}, listeners
    assert http_status(shared, door_url("alpha")) == "200"
    assert http_status(shared, door_url("alpha", scheme="http")) == "308"
    # From outside the fleet network (the uplink forward, from 10.0.2.2) nothing answers.
    from owuibuild import probes

    with pytest.raises((OSError, probes.ProbeFailure)):
        probes.http_get("127.0.0.1", dock.host_port(port), "/health", 10)
    # Docker adds no firewall rules of its own (daemon.json): the host firewall is the only
    # table.
    assert dock.ssh("sudo nft list tables", check=True).stdout.split() == [
        "table",
        "inet",
        "owuibuild",
    ]
    # A sender on the fleet link but outside the fleet network: the front door's ports admit
    # the fleet network only (front_door.allow_from's default), so the input chain drops it
    # (the rule for planned ports from other sources counts the packets).
    drops_before = drop_count(dock)
    shared.ssh(f"sudo ip addr add {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    try:
        outside = {
            scheme: http_status(
                shared, f"--interface {OUTSIDER} {door_url('alpha', scheme=scheme)}"
            )
            for scheme in ("https", "http")
        }
    finally:
        shared.ssh(f"sudo ip addr del {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    assert outside == {"https": "000", "http": "000"}, outside
    assert drop_count(dock) > drops_before


def test_fleet_serves_its_instances_through_the_front_door(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """From the shared host, another host on the fleet network, as a browser there would ask:
    HTTPS to each instance's host name, resolved to the Docker host's address and verified
    with the fleet CA, reaches that instance and no other (the Open WebUI TEST DOUBLE's
    /checks name the instance's own Qdrant collections, and a marked request shows in its
    log alone, coming from the address Open WebUI takes X-Forwarded-* from), with HSTS; plain
    HTTP is redirected to HTTPS and reaches no instance; a name the front door does not serve
    (as SNI, as Host, or no name at all) reaches no instance. owuibuild's own probe, as
    `owuibuild status` runs it, gets each instance's /health there. Caddy runs as
    owui-front-door.service, as the caddy user, with its state directory on the data
    volume."""
    shared, dock = booted["vms"][SHARED], booted["vms"][DOCK]
    token = pysecrets.token_hex(8)
    unknown = f"gamma.{FLEET_DOMAIN}"  # on the certificate of no front door, in no route

    def mark(case: str) -> str:
        return f"/front-door-{token}-{case}"

    requests = {}
    for name, host in HOST_NAMES.items():
        requests[f"{name}-checks"] = door(host, "/checks")
        requests[f"{name}-marked"] = door(host, mark(name))
        requests[f"{name}-plain"] = door(host, f"{mark(f'{name}-plain')}?q=1", tls=False)
    requests["unknown-sni"] = door(unknown, mark("unknown-sni"))
    requests["unknown-sni-unverified"] = door(unknown, mark("unknown-sni-unverified"), verify=False)
    # No SNI (the address dialled), with a Host the front door does serve.
    requests["no-sni"] = door(None, mark("no-sni"), verify=False, host=HOST_NAMES["alpha"])
    # The right name for TLS, a name the front door does not serve as Host.
    requests["unknown-host"] = door(HOST_NAMES["alpha"], mark("unknown-host"), host=unknown)
    statuses = {f"{name}-status": named(host, "/health") for name, host in HOST_NAMES.items()}
    result = guest_probe(shared, {"cafile": FLEET_CA, "door": requests, "named": statuses})

    for name, host in HOST_NAMES.items():
        checks = result[f"{name}-checks"]
        assert isinstance(checks, dict) and checks["status"] == 200, (name, checks)
        assert checks["headers"]["strict-transport-security"] == [front_door.HSTS], checks
        # Caddy's answer with the instance's: each adds its own Server header.
        assert checks["headers"]["server"][0] == "Caddy", checks
        assert len(checks["headers"]["server"]) == 2, checks
        plain = result[f"{name}-plain"]
        assert isinstance(plain, dict) and plain["status"] == 308, (name, plain)
        assert plain["headers"]["location"] == [f"https://{host}{mark(f'{name}-plain')}?q=1"]
        status = result[f"{name}-status"]
        assert isinstance(status, dict) and status["status"] == 200, (name, status)
        if REAL_OPENWEBUI:
            assert json.loads(status["body"])["status"] is True, status
            continue
        assert json.loads(status["body"]) == {"status": True, "test_double": True}, status
        # That instance's own answer: what it answers on its own port, naming its own
        # knowledge collection (the other instance's differs).
        body = json.loads(checks["body"])
        assert body == instance_checks(dock, name), (name, body)
        knowledge = next(
            c for c in fleet.instance(name).qdrant_collections if c.endswith("_knowledge")
        )
        assert body["qdrant"]["detail"].endswith(f" written to {knowledge}"), (name, body)
        marked = result[f"{name}-marked"]
        assert isinstance(marked, dict), marked
        assert (marked["status"], marked["body"]) == (404, '{"detail": "not found"}'), marked

    # Names the front door does not serve: no TLS handshake for an unknown or missing SNI
    # (no certificate names it), and the front door's own 421 for an unknown Host.
    assert result["unknown-sni"] == "SSLError", result["unknown-sni"]
    assert result["unknown-sni-unverified"] == "SSLError", result["unknown-sni-unverified"]
    assert result["no-sni"] == "SSLError", result["no-sni"]
    stray = result["unknown-host"]
    assert isinstance(stray, dict), stray
    assert stray["headers"]["server"] == ["Caddy"] and stray["status"] == 421, stray
    assert "no instance is served at this host name" in stray["body"], stray

    if not REAL_OPENWEBUI:
        # Each instance saw its own marked request and nothing else of this test's: not the
        # redirected ones, not the other instance's, not those for names it does not serve.
        # It came from the instance network's gateway (docker-proxy, which Caddy dials), the
        # one address whose X-Forwarded-* Open WebUI believes (FORWARDED_ALLOW_IPS).
        for name in INSTANCES:
            log = instance_log(dock, name)
            seen = set(re.findall(rf"/front-door-{token}-([\w-]+)", log))
            assert seen == {name}, (name, seen)
            line = next(x for x in log.splitlines() if mark(name) in x)
            assert line.startswith(f"{fleet.instance(name).proxy_address} "), line

    # The front door's unit, as caddy, its state directory on the data volume.
    state = dock.ssh(f"systemctl is-active {front_door.UNIT_NAME}").stdout.strip()
    assert state == "active", state
    user = dock.ssh(
        f"ps -o user= -p $(systemctl show --property=MainPID --value {front_door.UNIT_NAME})",
        check=True,
    ).stdout.strip()
    assert user == "caddy", user
    assert front_door.STORAGE.startswith(f"{DATA_MOUNT}/"), front_door.STORAGE
    storage = dock.ssh(f"sudo stat -c '%U %a' {front_door.STORAGE}", check=True).stdout.split()
    assert storage == ["caddy", "700"], storage
    source = dock.ssh(f"sudo findmnt -n -o SOURCE --target {front_door.STORAGE}", check=True)
    assert source.stdout.strip() == DATA_DEVICE, source.stdout


def prometheus_api(shared: VM, path: str) -> Any:
    """An answer of Prometheus's HTTP API, asked on the shared host over HTTPS with the fleet
    CA (Prometheus serves its private address only)."""
    url = f"https://{SHARED_ADDRESS}:{PROMETHEUS_PORT}{path}"
    reply = shared.ssh(f"curl -sS --max-time 20 --cacert {FLEET_CA} '{url}'", check=True)
    return json.loads(reply.stdout)


def test_prometheus_has_every_target_up(booted: dict[str, Any], fleet: Fleet) -> None:
    """The shared host's Prometheus scrapes every target the plan names, over HTTPS verified
    against the fleet CA: both hosts' node exporters, the PostgreSQL exporter, every Redis
    server through the Redis exporter, Qdrant's /metrics (the TEST DOUBLE's, with the read-only
    token), itself, and through the blackbox exporter each instance's /health through the
    front door, Ollama's /api/version and each host's certificate. All are up, and its samples
    are on the data volume."""
    shared = booted["vms"][SHARED]
    plan = fleet.plan
    expected = {
        ("node", f"{SHARED_ADDRESS}:{NODE_EXPORTER_PORT}"),
        ("node", f"{DOCK_ADDRESS}:{NODE_EXPORTER_PORT}"),
        ("postgres", f"{SHARED_ADDRESS}:{POSTGRES_EXPORTER_PORT}"),
        ("qdrant", f"{SHARED_ADDRESS}:{QDRANT_PORT}"),
        ("prometheus", f"{SHARED_ADDRESS}:{PROMETHEUS_PORT}"),
        *(("redis", f"rediss://{SHARED_ADDRESS}:{s.port}") for s in plan.redis_servers),
        *(("blackbox", prometheus.health_target(plan, i)) for i in plan.instances),
        ("blackbox", f"https://{SHARED_ADDRESS}:{OLLAMA_PORT}/api/version"),
        ("blackbox", f"{SHARED_ADDRESS}:{NODE_EXPORTER_PORT}"),
        ("blackbox", f"{DOCK_ADDRESS}:{NODE_EXPORTER_PORT}"),
    }
    deadline = time.monotonic() + 240
    while True:
        targets = prometheus_api(shared, "/api/v1/targets?state=active")["data"]
        found = {
            (t["labels"]["job"], t["labels"]["instance"]): t["health"]
            for t in targets["activeTargets"]
        }
        if set(found) == expected and set(found.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, {k: v for k, v in found.items() if v != "up"}
        time.sleep(10)
    # Probes that answer but fail would be up with probe_success 0; the exporters' servers too.
    for query in ("probe_success == 0", "redis_up == 0", "pg_up == 0"):
        result = prometheus_api(shared, f"/api/v1/query?query={query.replace(' ', '%20')}")
        assert result["data"]["result"] == [], (query, result)
    # The probes went through the front door: each instance's module names its host name.
    for inst in plan.instances:
        series = prometheus_api(
            shared, f"/api/v1/query?query=probe_http_ssl%7Bopenwebui=%22{inst.name}%22%7D"
        )["data"]["result"]
        assert [s["value"][1] for s in series] == ["1"], (inst.name, series)
    source = shared.ssh(
        f"sudo findmnt -n -o SOURCE --target {prometheus.PROMETHEUS_DATA}", check=True
    ).stdout
    assert source.strip() == DATA_DEVICE, source
    owner = shared.ssh(f"sudo stat -c %U {prometheus.PROMETHEUS_DATA}/wal", check=True).stdout
    assert owner.strip() == "prometheus", owner


def test_shared_state_lives_on_the_data_volume(booted: dict[str, Any], fleet: Fleet) -> None:
    shared = booted["vms"][SHARED]
    major = pg_major(fleet)
    assert major == 17, "debian-13 runs PostgreSQL 17"
    pg_data = f"{DATA_MOUNT}/postgresql/{major}/main"
    data_dir = shared.ssh("sudo -u postgres psql -XAtc 'SHOW data_directory'", check=True)
    assert data_dir.stdout.strip() == pg_data
    version = shared.ssh("sudo -u postgres psql -XAtc 'SHOW server_version_num'", check=True)
    assert version.stdout.strip().startswith(str(major)), version.stdout
    paths = [pg_data, *(f"{DATA_MOUNT}/redis/{n}" for n in INSTANCES)]
    paths += [f"{DATA_MOUNT}/qdrant/storage", MODELS_DIR]
    for path in paths:
        source = shared.ssh(f"sudo findmnt -n -o SOURCE --target {path}", check=True).stdout
        assert source.strip() == DATA_DEVICE, (path, source)
    # Default-deny firewall; SSH by key only.
    chain = shared.ssh("sudo nft list chain inet owuibuild input", check=True).stdout
    assert re.search(r"hook input priority filter; policy drop;", chain), chain
    sshd = shared.ssh("sudo sshd -T", check=True).stdout
    assert "passwordauthentication no" in sshd.splitlines(), "password logins are on"


def test_reboot_of_the_docker_host_brings_its_instances_back(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    dock = booted["vms"][DOCK]
    before = dock.boot_id()
    dock.reboot(timeout=BOOT_TIMEOUT)
    assert dock.boot_id() != before
    assert_cloud_init_clean(dock, BOOT_TIMEOUT)
    # Healthy only once every instance has used its database, Redis, Qdrant and Ollama again.
    wait_instances_healthy(dock, fleet)
    assert instances_in_use(dock) == IN_USE
    # And served through the front door again, to the other host.
    assert front_door_serves(booted["vms"][SHARED]) == dict.fromkeys(INSTANCES, "200")
    assert cross_credentials(dock, fleet) == CROSS_CREDENTIALS
    # The host firewall loaded by its own unit at boot, and never flushed by the
    # distribution's nftables.service (masked: its start flushes the whole ruleset).
    chain = dock.ssh("sudo nft list chain inet owuibuild input", check=True).stdout
    assert re.search(r"hook input priority filter; policy drop;", chain), chain
    state = dock.ssh("systemctl is-enabled nftables.service; systemctl is-active nftables.service")
    assert state.stdout.split() == ["masked", "inactive"], state.stdout
    # The first-boot firewall unit ran at the first boot only.
    again = dock.ssh(
        f"systemctl show --property=ConditionResult --value {firewall.FIRST_BOOT_UNIT_NAME}"
    )
    assert again.stdout.strip() == "no", again.stdout


def test_new_root_disk_for_the_docker_host_keeps_every_instances_data(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """The Docker host replaced by a new root disk (the golden image again, same seed, same data
    volume): each instance's data directory is still there and both instances come back
    healthy against the same shared host."""
    vms = booted["vms"]
    dock = vms[DOCK]
    token = pysecrets.token_hex(8)
    for name in INSTANCES:
        data_dir = fleet.instance(name).data_dir
        dock.ssh(f"echo {token}-{name} | sudo tee {data_dir}/replacement-marker", check=True)
    machine_id = dock.ssh("cat /etc/machine-id", check=True).stdout
    dock.shutdown(timeout=300)
    dock.close()

    new = VM(
        booted["images"][DOCK],
        fleet.seed(DOCK),
        data_disk=booted["disks"][DOCK],
        memory_mb=DOCK_MEMORY_MB,
        name="fleet-dock-replaced",
        fleet_link=booted["links"][DOCK],
        restrict=True,
    )
    vms[DOCK] = new  # closed by the fixture
    new.start()
    new.wait_for_ssh(fleet.key, ADMIN, timeout=BOOT_TIMEOUT)
    assert_cloud_init_clean(new, BOOT_TIMEOUT)
    assert new.ssh("cat /etc/machine-id", check=True).stdout != machine_id, "not a new root disk"
    wait_instances_healthy(new, fleet)
    for name in INSTANCES:
        data_dir = fleet.instance(name).data_dir
        marker = new.ssh(f"sudo cat {data_dir}/replacement-marker", check=True).stdout
        assert marker.strip() == f"{token}-{name}"
    assert instances_in_use(new) == IN_USE
    assert cross_credentials(new, fleet) == CROSS_CREDENTIALS
    # The new root disk's front door serves them, its state kept on the data volume.
    assert front_door_serves(vms[SHARED]) == dict.fromkeys(INSTANCES, "200")


# -- 5. a new seed applied live, through the seed media ------------------------------------------

NEW_INSTANCE, NEW_PORT = "gamma", 3003
CONVERGE_UNIT = "owuibuild-seed-converge@sr0.service"


def swap_seed(vm: VM, iso: Any) -> None:
    """Put ``iso`` in the guest's CD-ROM drive through QEMU's monitor, as Proxmox or libvirt
    swap a VM's seed medium."""
    drives = [d for d in vm.qmp("query-block") if d.get("removable")]
    assert len(drives) == 1, drives
    vm.qmp(
        "blockdev-change-medium",
        {"device": drives[0]["device"], "filename": str(iso), "format": "raw",
         "read-only-mode": "read-only", "force": True},
    )  # fmt: skip


def applied_record(vm: VM) -> dict[str, Any]:
    out = vm.ssh("cat /etc/owuibuild/seed-applied.json", check=True).stdout
    record: dict[str, Any] = json.loads(out)
    return record


def converge_runs(vm: VM) -> list[str]:
    """What the converge logged, each run's last line (oldest first)."""
    out = vm.ssh(
        f"sudo journalctl --no-pager -o cat -u {CONVERGE_UNIT} | grep owuibuild-seed", timeout=60
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def wait_converged(vm: VM, marker: str, seen: int, timeout: float = 600) -> list[str]:
    """Wait until the converge logged a new line holding ``marker`` after the first ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = converge_runs(vm)[seen:]
        if any(marker in line for line in lines):
            # and the run is over
            state = vm.ssh(f"systemctl is-active {CONVERGE_UNIT}", timeout=60).stdout.strip()
            if state != "activating":
                return lines
        time.sleep(3)
    raise AssertionError(f"no converge logged {marker!r}: {converge_runs(vm)[seen:]}")


def with_instance(text: str) -> str:
    line = (
        f"  - {{name: {NEW_INSTANCE}, host: {DOCK}, port: {NEW_PORT}, "
        f"url: https://{NEW_INSTANCE}.{FLEET_DOMAIN}}}\n"
    )
    head, sep, tail = text.partition("images:")
    assert sep, text
    return head + line + sep + tail


def render(blueprint: Any, out: Any) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "owuibuild.cli", "render", str(blueprint), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


POLLER = (
    "nohup sh -c 'while :; do "
    'printf "%s %s\\n" "$(date +%s.%N)" '
    '"$(curl -s -o /dev/null -w %{{http_code}} --max-time 10 {url})"; sleep 1; done\' '
    ">/tmp/poll-alpha.log 2>&1 </dev/null & echo $! >/tmp/poll-alpha.pid"
)


def alpha_state(shared: VM, dock: VM, fleet: Fleet) -> dict[str, str]:
    inst = fleet.instance("alpha")
    container = dock.ssh(
        "sudo docker inspect --format '{{.Id}} {{.State.StartedAt}} {{.State.Pid}}' "
        "$(sudo docker compose -p alpha ps -q openwebui)",
        check=True,
    ).stdout.strip()
    pg = shared.ssh(f"systemctl show --property=MainPID --value {postgres_unit(fleet)}").stdout
    redis = shared.ssh("systemctl show --property=MainPID --value redis-server@alpha.service")
    return {
        "container": container,
        "postgres": pg.strip(),
        "redis": redis.stdout.strip(),
        "unit": dock.ssh(f"systemctl show -p ActiveEnterTimestamp {inst.unit_name}").stdout,
    }


def diagnose(shared: VM, dock: VM, lines: list[str]) -> str:
    """What the hosts logged around a converge, for a failed assertion's message."""
    out = [f"converge: {lines}"]
    for vm, commands in (
        (dock, ["sudo journalctl -k --no-pager | grep -iE 'oom|killed process' | tail -5",
                "sudo journalctl --no-pager -u owui-alpha.service -u docker.service | tail -15",
                "sudo journalctl --no-pager -u owui-front-door.service | tail -8",
                "sudo docker ps -a --format '{{.Names}} {{.Status}}'", "free -m"]),
        (shared, ["sudo journalctl -k --no-pager | grep -iE 'oom|killed process' | tail -5",
                  "free -m"]),
    ):  # fmt: skip
        for command in commands:
            out.append(f"{vm.name}$ {command}\n{vm.ssh(command, timeout=120).stdout}")
    return "\n".join(out)


def postgres_unit(fleet: Fleet) -> str:
    return f"postgresql@{pg_major(fleet)}-main.service"


def test_a_new_seed_adds_an_instance_live_and_others_are_undisturbed(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """Add instance gamma to the blueprint, render, and swap both hosts' seed media through
    QEMU's monitor: gamma comes up healthy with its own database and Redis, while alpha,
    polled through the front door once a second, never fails and keeps its container, its
    PostgreSQL server and its Redis server."""
    shared, dock = booted["vms"][SHARED], booted["vms"][DOCK]
    # A host the tests before replaced or rebooted settles first: its boot done, its
    # instances healthy (a restart systemd still has queued would look like the converge's).
    for vm in (shared, dock):
        vm.ssh("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT)
    wait_instances_healthy(dock, fleet)
    blueprint = fleet.workdir / "fleetboot.yml"
    original = blueprint.read_text()
    booted["blueprint_text"] = original
    before = {h: applied_record(vm) for h, vm in booted["vms"].items()}
    state = alpha_state(shared, dock, fleet)
    seen = {h: len(converge_runs(vm)) for h, vm in booted["vms"].items()}
    shared.ssh(POLLER.format(url=door_url("alpha")), check=True)

    blueprint.write_text(with_instance(original))
    out = fleet.workdir / "out-gamma"
    said = render(blueprint, out)
    for host in (SHARED, DOCK):
        assert f"seed of {host}: generation {before[host]['generation']} -> " in said, said
        assert "needs a host replacement" not in said, said

    swap_seed(shared, out / "hosts" / SHARED / "seed.iso")
    lines = wait_converged(shared, "applied generation", seen[SHARED])
    swap_seed(dock, out / "hosts" / DOCK / "seed.iso")
    lines += wait_converged(dock, "applied generation", seen[DOCK])

    # gamma: healthy, its own database and Redis (the stand-in's checks), behind the front door
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = http_status(shared, door_url("alpha").replace("alpha", NEW_INSTANCE))
        if status == "200":
            break
        time.sleep(5)
    checks = dock.ssh(f"curl -s http://127.0.0.1:{NEW_PORT}/checks", check=True).stdout
    assert status == "200", (status, checks, lines)
    assert {k: v["ok"] for k, v in json.loads(checks).items()} == ALL_CHECKS_OK, checks

    shared.ssh("kill $(cat /tmp/poll-alpha.pid)")
    polls = shared.ssh("cat /tmp/poll-alpha.log", check=True).stdout.split("\n")
    timed = [(float(line.split()[0]), line.split()[1]) for line in polls if line.strip()]
    answers = [status for _, status in timed]
    failures = [t for t, status in timed if status != "200"]
    after = [t for t, status in timed if failures and status == "200" and t > failures[0]]
    window = (after[0] if after else timed[-1][0]) - failures[0] if failures else 0.0
    record("live seed", failed=len(failures), checks=len(answers), window_s=window)
    after_state = alpha_state(shared, dock, fleet)
    why = diagnose(shared, dock, lines) if set(answers) != {"200"} or after_state != state else ""
    assert len(answers) >= 10, polls
    assert after_state == state, (after_state, state, why)
    assert set(answers) == {"200"}, ([ln for ln in polls if not ln.endswith(" 200")], why)
    for host, vm in booted["vms"].items():
        assert applied_record(vm)["generation"] == before[host]["generation"] + 1
    print(f"\nconverge: alpha answered {len(answers)} checks, none failed; {lines}")
    booted["gamma_out"] = out


def test_removing_an_instance_stops_it_and_keeps_its_data(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """Gamma out of the blueprint again, both seeds swapped: its container and Redis server
    stop, its files and logins go (pg_hba.conf, the firewall's opening), and its data stays
    (data directory, database, Redis data); alpha goes on answering."""
    from owuibuild.pipeline import compile_blueprint

    shared, dock = booted["vms"][SHARED], booted["vms"][DOCK]
    blueprint = fleet.workdir / "fleetboot.yml"
    compiled = compile_blueprint(blueprint, write_secrets=False)  # still with gamma
    assert compiled.plan is not None
    gamma = next(i for i in compiled.plan.instances if i.name == NEW_INSTANCE)
    token = pysecrets.token_hex(8)
    dock.ssh(f"echo {token} | sudo tee {gamma.data_dir}/removal-marker", check=True)
    before = {h: applied_record(vm)["generation"] for h, vm in booted["vms"].items()}
    seen = {h: len(converge_runs(vm)) for h, vm in booted["vms"].items()}

    blueprint.write_text(booted["blueprint_text"])
    out = fleet.workdir / "out-removed"
    said = render(blueprint, out)
    assert "needs a host replacement" not in said, said
    swap_seed(shared, out / "hosts" / SHARED / "seed.iso")
    lines = wait_converged(shared, "applied generation", seen[SHARED])
    swap_seed(dock, out / "hosts" / DOCK / "seed.iso")
    lines += wait_converged(dock, "applied generation", seen[DOCK])
    assert any(f"units stopped: {gamma.unit_name}" in line for line in lines), lines

    # Stopped and gone from systemd; its files removed; its data kept.
    state = dock.ssh(
        f"systemctl is-enabled {gamma.unit_name}; systemctl is-active {gamma.unit_name}"
    )
    assert state.stdout.split()[-1] == "inactive", state.stdout
    running = dock.ssh(
        f"sudo docker ps -q --filter label=com.docker.compose.project={NEW_INSTANCE}"
    )
    assert running.stdout.strip() == "", running.stdout
    assert dock.ssh(f"test -e /opt/owuibuild/{NEW_INSTANCE}/{NEW_INSTANCE}.env").returncode == 1
    marker = dock.ssh(f"sudo cat {gamma.data_dir}/removal-marker", check=True).stdout
    assert marker.strip() == token
    # On the shared host: no Redis server, no pg_hba line, no firewall opening; data kept.
    redis = shared.ssh(f"systemctl is-active redis-server@{NEW_INSTANCE}.service").stdout
    assert redis.strip() == "inactive", redis
    hba = shared.ssh(f"sudo cat /etc/postgresql/{pg_major(fleet)}/main/pg_hba.conf").stdout
    assert gamma.db_role not in hba and "alpha" in hba, hba
    ruleset = shared.ssh("sudo nft list table inet owuibuild", check=True).stdout
    assert f"redis-{NEW_INSTANCE}" not in ruleset and "redis-alpha" in ruleset, ruleset
    databases = shared.ssh(
        "sudo -u postgres psql -XAtc 'SELECT datname FROM pg_database'", check=True
    ).stdout.split()
    assert gamma.db_name in databases, databases
    assert shared.ssh(f"sudo test -d {REDIS_DATA_ROOT}/{NEW_INSTANCE}").returncode == 0
    for host, vm in booted["vms"].items():
        assert applied_record(vm)["generation"] == before[host] + 1
    assert http_status(shared, door_url("alpha")) == "200"


def test_a_seed_the_host_may_not_take_is_refused_and_changes_nothing(
    booted: dict[str, Any], fleet: Fleet
) -> None:
    """On the shared host, after the live converge: the first seed (an older generation), a
    seed signed with another fleet's key, and a seed whose change only a new host can take
    are each refused with the verifier's reason, and the applied seed stays."""
    shared = booted["vms"][SHARED]
    blueprint = fleet.workdir / "fleetboot.yml"
    current = blueprint.read_text()  # with gamma (the test above)
    other = fleet.workdir / "other-fleet"
    other.mkdir()
    (other / "fleetboot.yml").write_text(current)
    render(other / "fleetboot.yml", other / "out")  # its own secrets: its own signing key
    blueprint.write_text(current.replace("timezone: UTC", "timezone: Europe/Paris"))
    said = render(blueprint, fleet.workdir / "out-timezone")
    assert f"seed of {SHARED}: generation" in said and "needs a host replacement" in said, said
    seeds = {
        "older": (fleet.seed(SHARED), "is older than the applied", 7),
        "other key": (other / "out" / "hosts" / SHARED / "seed.iso", "does not verify", 4),
        "replacement": (
            fleet.workdir / "out-timezone" / "hosts" / SHARED / "seed.iso",
            "needs a host replacement",
            8,
        ),
    }
    applied = applied_record(shared)
    files = shared.ssh("sudo sha256sum /etc/owuibuild/firewall.nft", check=True).stdout
    for what, (iso, reason, code) in seeds.items():
        seen = len(converge_runs(shared))
        swap_seed(shared, iso)
        lines = wait_converged(shared, "nothing changed", seen)
        assert any(reason in line for line in lines), (what, lines)
        assert any(f"exit {code})" in line for line in lines), (what, lines)
        assert applied_record(shared) == applied, what
    assert shared.ssh("sudo sha256sum /etc/owuibuild/firewall.nft").stdout == files
