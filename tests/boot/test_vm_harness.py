"""Boot tier: prove the QEMU harness (tests/infra/vm.py) with a hand-made seed.

A minimal #cloud-config (one user with a fresh ed25519 key, a runcmd touch
file), meta-data and a network-config v2 with a static 10.0.2.15/24 are packed
by ``make_seed_iso`` and booted on the cached Debian 13 base image. The test
waits for cloud-init ``done`` without errors and checks, over ssh to a
127.0.0.1 forward, that the file exists and the static address was applied.
Its boot is the ``bare`` row of the boot benchmark (bench/boot_bench.py): the
base image with a seed that only sets up the admin user, which golden boots
are compared with.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from owuibuild.seed_iso import make_seed_iso

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from fleet_blueprint import BootTiming, record_boot
from vm import (
    DEFAULT_MAC,
    GUEST_ADDRESS,
    GUEST_DNS,
    GUEST_GATEWAY,
    VM,
    ensure_base_image,
    missing_tools,
)

# The plain base image with a minimal seed: the bench's bare row. Opt-in like the other plain
# base-image boots (OWUIBUILD_BOOT_VANILLA=1): the fleet proves the harness in CI.
pytestmark = [pytest.mark.boot, pytest.mark.vanilla]

USER = "tester"
MARKER = "/var/lib/owuibuild-harness-ok"


def _skip_unless_tools() -> None:
    from conftest import unavailable

    missing = missing_tools(extra=["mmdebstrap"])
    if missing:
        unavailable(f"boot tier needs {', '.join(missing)} (make system-deps installs them)")


def _seed(public_key: str, instance_id: str) -> dict[str, bytes]:
    user_data = f"""#cloud-config
users:
  - name: {USER}
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys:
      - {public_key}
runcmd:
  - [touch, {MARKER}]
"""
    meta_data = f"instance-id: {instance_id}\nlocal-hostname: harness\n"
    network_config = f"""version: 2
ethernets:
  nic0:
    match:
      macaddress: "{DEFAULT_MAC}"
    dhcp4: false
    dhcp6: false
    addresses: [{GUEST_ADDRESS}/24]
    routes:
      - to: default
        via: {GUEST_GATEWAY}
    nameservers:
      addresses: [{GUEST_DNS}]
"""
    return {
        "user-data": user_data.encode(),
        "meta-data": meta_data.encode(),
        "network-config": network_config.encode(),
    }


def _http_get(port: int, path: str, timeout: float) -> bytes:
    """GET from a forwarded port; user-mode networking accepts before the guest does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                body: bytes = r.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_boot_seed_cloud_init_done_ssh_and_static_network(tmp_path: Path) -> None:
    _skip_unless_tools()

    t0 = time.monotonic()
    base = ensure_base_image("trixie")
    print(f"base image ready in {time.monotonic() - t0:.1f} s: {base.disk}")

    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "harness", "-f", str(key)],
        check=True,
    )
    public_key = key.with_suffix(".pub").read_text().strip()
    seed = make_seed_iso(_seed(public_key, f"iid-harness-{uuid.uuid4().hex[:12]}"))

    data_disk = tmp_path / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(data_disk), "64M"], check=True)

    with VM(base, seed, name="harness", forwards={8080: None}, data_disk=data_disk) as vm:
        ssh_at = vm.wait_for_ssh(key, USER, timeout=600)
        status = vm.wait_for_cloud_init(timeout=900)
        done_at = vm.uptime()
        print(f"ssh after {ssh_at:.1f} s, cloud-init {status.status} after {done_at:.1f} s")
        record_boot(BootTiming("bare", ssh_at, done_at, done_at))
        print(status.long_output)
        for line in status.log_warnings:
            print(f"cloud-init log: {line}")
        assert status.status == "done", status
        assert status.errors == [], status
        assert status.recoverable == {}, status

        assert vm.ssh(["test", "-f", MARKER]).returncode == 0, "runcmd marker missing"

        addr = vm.ssh("ip -4 -o addr show", check=True).stdout
        assert f"inet {GUEST_ADDRESS}/24" in addr, addr
        # A static address has no DHCP lease: no "dynamic" flag on it.
        line = next(ln for ln in addr.splitlines() if f"{GUEST_ADDRESS}/24" in ln)
        assert "dynamic" not in line, line
        route = vm.ssh("ip -4 route show default", check=True).stdout
        assert f"via {GUEST_GATEWAY}" in route, route
        netplan = vm.ssh("sudo cat /etc/netplan/50-cloud-init.yaml", check=True).stdout
        assert f"{GUEST_ADDRESS}/24" in netplan, netplan
        dns = vm.ssh("resolvectl dns", check=True).stdout
        assert GUEST_DNS in dns, dns

        # The harness only ever dials 127.0.0.1; the guest sees us from the gateway.
        peer = vm.ssh("echo $SSH_CONNECTION", check=True).stdout.split()
        assert peer[0] == GUEST_GATEWAY, peer

        # The extra disk is the second virtio disk.
        size = vm.ssh("lsblk -bdno SIZE /dev/vdb", check=True).stdout.strip()
        assert size == str(64 * 1024 * 1024), size

        # A guest port forwarded to 127.0.0.1 on the host.
        vm.ssh(
            "setsid -f python3 -m http.server 8080 --directory /etc >/dev/null 2>&1 </dev/null",
            check=True,
        )
        assert _http_get(vm.host_port(8080), "/hostname", timeout=60).strip() == b"harness"

        # Reboot: same instance, so per-instance modules do not run again.
        before = vm.boot_id()
        vm.ssh(["sudo", "rm", MARKER], check=True)
        print(f"reboot back to ssh in {vm.reboot(timeout=600):.1f} s")
        assert vm.boot_id() != before
        again = vm.wait_for_cloud_init(timeout=600)
        assert again.status == "done" and again.errors == [], again
        assert vm.ssh(["test", "-f", MARKER]).returncode != 0, "runcmd ran twice"

        vm.shutdown(timeout=120)
        assert not vm.is_running()
