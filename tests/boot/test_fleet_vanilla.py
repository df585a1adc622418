"""Boot tier, opt-in (OWUIBUILD_BOOT_VANILLA=1; `make bench-boot` sets it): the two-VM Debian 13
fleet of tests/boot/test_fleet_boot.py booted from the plain Debian 13 base image, so that
cloud-init installs every package at first boot and the Docker host loads the Open WebUI image
(here its TEST DOUBLE) from the mirror's archive, as a site without golden images would.

It proves the vanilla path and gives the bench its vanilla rows. It is not in CI: a vanilla
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
    INSTANCES,
    SHARED,
    Fleet,
    cross_credentials,
    docker_from_the_archive,
    instance_health,
    standin_checks,
    start_fleet,
    wait_fleet_ready,
)
from infra.vm import FleetLink, ensure_base_image

pytestmark = [pytest.mark.boot, pytest.mark.vanilla]


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
