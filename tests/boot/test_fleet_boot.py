"""Boot tier: a real two-VM Debian 13 fleet, a shared host and a Docker host, booted from their
generated seeds on their golden images and talking over a private network through both
generated firewalls (network and test doubles: tests/boot/fleet_vm.py).

One fleet boots once and every test of this module shares it, in order:

1. both hosts boot at once from the golden images that ``owuibuild bake`` made with Packer
   (tests/boot/golden.py; CI bakes them while the pure tiers run), on empty data volumes, with
   an uplink that lets nothing out: cloud-init clean, nothing installed, fetched or pulled, the
   baked models copied onto the data volume, both instances healthy;
2. instance isolation, both firewalls and the published-port filter, probed inside the guests;
3. a reboot of the Docker host brings every instance back (the shared host's reboot is the
   Debian 12 module's, opt-in: CI's budget holds one);
4. the Docker host replaced by a new root disk (the golden image again, same seed, same data
   volume): each instance's data directory survives. Replacing the shared host (cluster, rows,
   Redis keys) is the Debian 12 module's test, opt-in with the other plain-image boots: CI's
   60 minutes do not hold a second boot of both hosts.

The same seeds on the plain Debian 13 base image (cloud-init installs every package at first
boot) are booted by tests/boot/test_fleet_vanilla.py, opt-in (OWUIBUILD_BOOT_VANILLA=1):
a vanilla first boot installs what the bake installed, and CI's 60 minutes do not hold both.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_blueprint import FLEET_INTERFACE, assert_cloud_init_clean, empty_disk
from fleet_vm import (
    ADMIN,
    BOOT_TIMEOUT,
    CROSS_CREDENTIALS,
    DATA_DEVICE,
    DOCK,
    DOCK_ADDRESS,
    DOCK_MEMORY_MB,
    IN_USE,
    INSTANCES,
    MODELS_DIR,
    OUTSIDER,
    REAL_OPENWEBUI,
    SHARED,
    SHARED_ADDRESS,
    Fleet,
    apt_changes_since_boot,
    cross_credentials,
    docker_from_the_archive,
    drop_count,
    guest_probe,
    http_status,
    instance_health,
    instances_in_use,
    pg_major,
    start_fleet,
    wait_fleet_ready,
    wait_instances_healthy,
)
from infra.vm import VM, FleetLink
from owuibuild import bundle
from owuibuild.hostconfig import _first_boot as first_boot
from owuibuild.hostconfig import firewall, postgres
from owuibuild.plan import DATA_MOUNT, OLLAMA_PORT

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
    vms = start_fleet(fleet, images, disks, links, label, restrict=True)
    state: dict[str, Any] = {"vms": vms, "disks": disks, "links": links, "images": images}
    try:
        state["statuses"] = wait_fleet_ready(vms, fleet, label)
        state["fetched"] = mirror.requests[fetched:]
        yield state
    finally:
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
    pulls = (
        vms[DOCK]
        .ssh(f"curl -sf http://{SHARED_ADDRESS}:{OLLAMA_PORT}/api/double/pulls", check=True)
        .stdout
    )
    assert json.loads(pulls)["count"] == 0, pulls


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


def test_instance_ports_answer_only_on_the_private_address(booted: dict[str, Any]) -> None:
    dock, shared = booted["vms"][DOCK], booted["vms"][SHARED]
    port = INSTANCES["alpha"]
    health = f"http://{DOCK_ADDRESS}:{port}/health"
    assert http_status(dock, health) == "200"
    assert guest_probe(dock, {"tcp": {"loopback": ("127.0.0.1", port)}}) == {"loopback": "refused"}
    # A host of the fleet network reaches it.
    assert http_status(shared, health) == "200"
    # From outside the fleet network (the uplink forward, from 10.0.2.2) nothing answers.
    from owuibuild import probes

    with pytest.raises((OSError, probes.ProbeFailure)):
        probes.http_get("127.0.0.1", dock.host_port(port), "/health", 10)
    # Docker adds no firewall rules of its own (daemon.json): the host firewall is the only
    # table, and docker-proxy's listener is filtered by its input chain.
    assert dock.ssh("sudo nft list tables", check=True).stdout.split() == [
        "table",
        "inet",
        "owuibuild",
    ]
    # A sender on the fleet link but outside the fleet network: the input chain drops it (the
    # rule for planned ports from other sources counts the packets).
    drops_before = drop_count(dock)
    shared.ssh(f"sudo ip addr add {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    try:
        probe = http_status(shared, f"--interface {OUTSIDER} {health}")
    finally:
        shared.ssh(f"sudo ip addr del {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    assert probe == "000", probe
    assert drop_count(dock) > drops_before


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
