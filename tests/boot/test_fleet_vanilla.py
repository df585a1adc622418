"""Boot tier, opt-in (OWUIBUILD_BOOT_VANILLA=1; `make bench-boot` sets it): the two-VM Debian 13
fleet of tests/boot/test_fleet_boot.py booted from the plain Debian 13 base image, so that
cloud-init installs every package at first boot and the Docker host loads the Open WebUI image
(here its TEST DOUBLE) from the mirror's archive, as a site without golden images would.
And the bench's bare pair: the same two guests from the plain base image with seeds that only
set the admin user, booted side by side as the golden pair is (two guests share the cores).

It proves the vanilla path and gives the bench its vanilla and bare rows. It is not in CI: a vanilla
first boot under TCG does the work of a bake again (about 20 minutes for the pair), and CI's
60 minutes already hold the bakes and the golden fleet, which run the same install steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fleet_blueprint import FLEET_SUITE, empty_disk
from fleet_vm import (
    ALL_CHECKS_OK,
    CROSS_CREDENTIALS,
    DOCK,
    DOCK_ADDRESS,
    INSTANCES,
    SHARED,
    SHARED_ADDRESS,
    Fleet,
    bare_seed,
    cross_credentials,
    docker_from_the_archive,
    instance_health,
    record_pair,
    standin_checks,
    start_fleet,
    wait_booted,
    wait_fleet_ready,
)
from infra.vm import FleetLink, ensure_base_image

pytestmark = [pytest.mark.boot, pytest.mark.vanilla]
ADDRESSES = {SHARED: SHARED_ADDRESS, DOCK: DOCK_ADDRESS}


@pytest.fixture(scope="module")
def vanilla(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    disks = {
        h: empty_disk(tmp_path_factory.mktemp(f"vanilla-{h}") / "data.qcow2")
        for h in (SHARED, DOCK)
    }
    a, b = FleetLink.pair()
    base = ensure_base_image(FLEET_SUITE)
    vms = start_fleet(fleet, {SHARED: base, DOCK: base}, disks, {SHARED: a, DOCK: b}, "vanilla")
    try:
        statuses = wait_fleet_ready(vms, fleet, "vanilla")
        yield {"vms": vms, "statuses": statuses}
    finally:
        for vm in vms.values():
            vm.close()


def test_vanilla_fleet_installs_at_first_boot(vanilla: dict[str, Any], fleet: Fleet) -> None:
    for status in vanilla["statuses"].values():
        assert status.status == "done" and not status.errors
    dock = vanilla["vms"][DOCK]
    output = dock.ssh("sudo cat /var/log/cloud-init-output.log", check=True).stdout
    assert f"owuibuild: loaded {fleet.plan.openwebui_image}" in output
    docker_from_the_archive(dock)
    assert all(h == "active healthy" for h in instance_health(dock, fleet).values())
    assert standin_checks(dock) == dict.fromkeys(INSTANCES, ALL_CHECKS_OK)
    assert cross_credentials(dock, fleet) == CROSS_CREDENTIALS


def test_bare_pair(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The bench's bare rows: each host's rendered meta-data and network-config with a
    user-data that only sets the admin user, on the plain base image, with the same memory,
    empty data disks and fleet link as the golden pair, booted side by side."""
    work = tmp_path_factory.mktemp("bare")
    disks = {h: empty_disk(work / f"{h}-data.qcow2") for h in (SHARED, DOCK)}
    seeds = {h: bare_seed(fleet, h, work) for h in (SHARED, DOCK)}
    a, b = FleetLink.pair()
    base = ensure_base_image(FLEET_SUITE)
    vms = start_fleet(
        fleet, {SHARED: base, DOCK: base}, disks, {SHARED: a, DOCK: b}, "bare", True, seeds
    )
    try:
        booted = wait_booted(vms, fleet.key, timeout=1800)
        record_pair(vms, "bare", booted.ssh, booted.done, booted.done)
        for host, vm in vms.items():
            # Only the admin user: nothing of the fleet was set up.
            assert vm.ssh("test -e /etc/owuibuild", timeout=60).returncode != 0, host
            # The rendered network-config was applied to the fleet NIC.
            addresses = vm.ssh("ip -4 -o addr show", check=True, timeout=60).stdout
            assert f"inet {ADDRESSES[host]}/" in addresses, addresses
    finally:
        for vm in vms.values():
            vm.close()
