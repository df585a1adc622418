"""Boot tier: the seed owuibuild writes brings up a real shared-services host, nobody logging in.

One vanilla boot carries most proofs, in order (the tests of this module share it):

1. ``test_vanilla_boot``: the cached Debian 12 base image boots with the rendered ``seed.iso``
   and an empty data disk; cloud-init ends ``done`` with no error and no warning; then, through
   127.0.0.1 forwards only, every instance role logs in to its own database and is refused on
   the others', each Redis answers to its ACL user only, Qdrant and Ollama run (TEST DOUBLES:
   they check our install steps, not Ollama or Qdrant) and Qdrant got the configured API key,
   both over HTTPS only (Qdrant itself, Ollama through its Caddy terminator on the private
   address, Ollama itself on loopback only; model management answered 403),
   nftables drops by default, SSH takes the admin key and refuses passwords, and the services'
   state lives on the data volume.
2. ``test_reboot_changes_nothing``: after a reboot everything answers again, and no
   per-instance step ran twice (role list, configuration files and their mtimes, the cluster's
   system identifier and the install log are unchanged).

3. ``test_replacement_keeps_data`` (issue 8): rows in alpha's database and a Redis key written
   through alpha's own credentials, a marker file; a clean shutdown; then a NEW root disk with
   the same seed and the same data disk. The rows, the login, the key, the marker and the
   filesystem UUID are all still there.

This is the Debian 12 (bookworm) fleet's shared host, booted from the plain base image: opt-in
(OWUIBUILD_BOOT_VANILLA=1) with the other plain-image boots. Golden boots, the Docker host's
reboot and new root disk are proven in CI on the Debian 13 two-VM fleet
(tests/boot/test_fleet_boot.py), which boots once for all its tests. Network layout and why the
gateway is 10.0.2.3: see tests/boot/fleet_blueprint.py.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.mirror import release_files
from fleet_blueprint import (
    ADMIN,
    DATA_DEVICE,
    DATA_LABEL,
    DOCK_INSTANCES,
    MODELS,
    OLLAMA_VERSION,
    OTHER_INSTANCE,
    PG_VERSION,
    QDRANT_VERSION,
    BootTiming,
    Fleet,
    assert_cloud_init_clean,
    empty_disk,
    https,
    pg_login,
    plain_http,
    psql,
    redis_call,
    redis_ping,
    render_fleet,
    ssh_lines,
    tcp_listeners,
    wait_until_ready,
)
from infra.vm import VM, ensure_base_image, missing_tools
from owuibuild.plan import DATA_MOUNT, OLLAMA_PORT, QDRANT_PORT
from owuibuild.probes import ProbeFailure, State

pytestmark = [pytest.mark.boot, pytest.mark.vanilla]

# This module boots the shared host of a debian-12 fleet (Debian 12's base image); the two-VM
# fleet of tests/boot/test_fleet_boot.py boots debian-13.
SUITE = "bookworm"

MEMORY_MB = 2048
PG_DATA = f"{DATA_MOUNT}/postgresql/{PG_VERSION}/main"
QDRANT_STORAGE = f"{DATA_MOUNT}/qdrant/storage"
QDRANT_DOUBLE_LOG = f"{QDRANT_STORAGE}/test-double-requests.log"
OLLAMA_MODELS = f"{DATA_MOUNT}/ollama/models"
MARKER = f"{DATA_MOUNT}/replacement-marker"
UNITS = (
    f"postgresql@{PG_VERSION}-main.service",
    *(f"redis-server@{name}.service" for name in (*DOCK_INSTANCES, OTHER_INSTANCE)),
    "qdrant.service",
    "ollama.service",
    "owui-ollama-tls.service",
    "owuibuild-firewall.service",
)
INITDB_SAYS = "The files belonging to this database system will be owned by user"


def _require_tools() -> None:
    from conftest import unavailable

    missing = missing_tools(extra=["mmdebstrap", "psql"])
    if missing:
        unavailable(f"the boot tier needs {', '.join(missing)} (make system-deps installs them)")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(mirror: Any, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    _require_tools()
    return render_fleet(tmp_path_factory.mktemp("fleet"), mirror)


@pytest.fixture(scope="module")
def data_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return empty_disk(tmp_path_factory.mktemp("data") / "data.qcow2")


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What one test of the vanilla sequence leaves for the next."""
    return {}


@pytest.fixture(scope="module")
def vanilla(fleet: Fleet, data_disk: Path) -> Iterator[VM]:
    base = ensure_base_image(SUITE)
    with VM(
        base,
        fleet.seed_iso,
        forwards=dict.fromkeys(fleet.guest_ports),
        data_disk=data_disk,
        memory_mb=MEMORY_MB,
        name="shared-vanilla",
    ) as vm:
        yield vm


def boot_to_ready(vm: VM, fleet: Fleet, image: str, **extra: Any) -> BootTiming:
    ssh_s = vm.wait_for_ssh(fleet.key, ADMIN, timeout=900)
    status = assert_cloud_init_clean(vm)
    done_s = vm.uptime()
    ready_s = wait_until_ready(vm, fleet)
    timing = BootTiming(image, ssh_s, done_s, ready_s, extra)
    print(
        f"{image}: ssh {ssh_s:.0f} s, cloud-init {status.status} {done_s:.0f} s, "
        f"ready {ready_s:.0f} s after QEMU started"
    )
    return timing


# -- the checks ----------------------------------------------------------------------------------


def check_units(vm: VM) -> None:
    active = vm.ssh(["systemctl", "is-active", *UNITS], timeout=60).stdout.split()
    assert active == ["active"] * len(UNITS), dict(zip(UNITS, active, strict=False))
    pull = vm.ssh(
        "systemctl show -p Result -p ExecMainStatus owui-ollama-models.service", timeout=60
    ).stdout.split()
    assert pull == ["Result=success", "ExecMainStatus=0"], pull


def check_postgres(vm: VM, fleet: Fleet) -> None:
    for name in DOCK_INSTANCES:
        assert pg_login(vm, fleet, name, name).state is State.OK
        for other in (*DOCK_INSTANCES, OTHER_INSTANCE, "postgres"):
            if other != name:
                outcome = pg_login(vm, fleet, name, other)
                assert outcome.state is State.REFUSED, (name, other, outcome)
    wrong = pg_login(vm, fleet, "alpha", "alpha", password="not-" + fleet.db_password("alpha"))
    assert wrong.state is State.AUTH_FAILED, wrong
    # gamma's host is dockb: its role, with its right password, is refused from dock.
    outcome = pg_login(vm, fleet, OTHER_INSTANCE, OTHER_INSTANCE)
    assert outcome.state is State.REFUSED, outcome
    outcome = pg_login(vm, fleet, "postgres", "postgres", password="x")
    assert outcome.state is State.REFUSED, outcome


def check_redis(vm: VM, fleet: Fleet) -> None:
    for name in DOCK_INSTANCES:
        assert redis_ping(vm, fleet, name, name).state is State.OK, name
        for other in DOCK_INSTANCES:
            if other != name:  # another instance's user and password: not on this server
                outcome = redis_ping(vm, fleet, name, other)
                assert outcome.state is State.AUTH_FAILED, (name, other, outcome)
        outcome = redis_ping(vm, fleet, name, "default", password="")
        assert outcome.state is State.AUTH_FAILED, outcome
    # gamma's server is open only to dockb: the firewall drops dock's packets.
    outcome = redis_ping(vm, fleet, OTHER_INSTANCE, OTHER_INSTANCE)
    assert outcome.state in (State.TIMEOUT, State.DOWN), outcome


def check_qdrant_and_ollama(vm: VM, fleet: Fleet) -> None:
    key = fleet.secret("qdrant.api_key")
    # Qdrant: HTTPS only, its certificate from the fleet CA for the shared host's address.
    assert https(vm, fleet, QDRANT_PORT, "/collections", {"api-key": key}).status == 200
    assert https(vm, fleet, QDRANT_PORT, "/collections").status == 401
    assert https(vm, fleet, QDRANT_PORT, "/collections", {"api-key": key + "x"}).status == 401
    log = [json.loads(line) for line in ssh_lines(vm, f"sudo cat {QDRANT_DOUBLE_LOG}")]
    assert any(e["path"] == "/collections" and e["api_key_ok"] for e in log), log
    # Plain HTTP (without the key: it would cross in clear text) gets no answer at all.
    with pytest.raises((OSError, ProbeFailure)):
        plain_http(vm, QDRANT_PORT, "/readyz")
    users = ssh_lines(
        vm,
        "for u in qdrant ollama owui-ollama-tls; do "
        'ps -o user= -p "$(systemctl show -p MainPID --value "$u.service")"; done',
    )
    assert users == ["qdrant", "ollama", "caddy"], users
    # Ollama on loopback only; its TLS terminator (Caddy) on the private address.
    assert tcp_listeners(vm, OLLAMA_PORT) == {
        f"127.0.0.1:{OLLAMA_PORT}": "ollama.service",
        f"{fleet.shared_address}:{OLLAMA_PORT}": "owui-ollama-tls.service",
    }
    version = json.loads(https(vm, fleet, OLLAMA_PORT, "/api/version").body)["version"]
    assert "test-double" in version, version
    # Plain HTTP on the terminator's port: Caddy's "HTTP request to an HTTPS server".
    assert plain_http(vm, OLLAMA_PORT, "/api/version").status == 400
    # Model management is closed to the instance hosts: 403 from the terminator.
    for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete")):
        body = json.dumps({"model": "tinyllama"}).encode()
        answer = https(vm, fleet, OLLAMA_PORT, path, method=method, body=body)
        assert answer.status == 403, (method, path, answer)
        assert "allow_model_management" in answer.body.decode(), answer.body


def check_firewall(vm: VM) -> None:
    ruleset = vm.ssh("sudo nft list ruleset", check=True, timeout=60).stdout
    assert "table inet owuibuild" in ruleset, ruleset
    chain = vm.ssh("sudo nft list chain inet owuibuild input", check=True, timeout=60).stdout
    assert re.search(r"type filter hook input priority filter; policy drop;", chain), chain


def check_ssh(vm: VM) -> None:
    # The admin key works (every ssh here uses it); a password login is not even offered.
    attempt = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(vm.ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "ConnectTimeout=20",
            f"{ADMIN}@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert attempt.returncode != 0, "a login without the key succeeded"
    methods = re.search(r"Permission denied \(([^)]*)\)", attempt.stderr)
    assert methods, attempt.stderr
    assert methods[1].split(",") == ["publickey"], methods[1]
    config = dict(
        line.split(" ", 1)
        for line in ssh_lines(vm, "sudo sshd -T")
        if line.split(" ", 1)[0]
        in ("passwordauthentication", "permitrootlogin", "kbdinteractiveauthentication")
    )
    assert config == {
        "passwordauthentication": "no",
        "permitrootlogin": "no",
        "kbdinteractiveauthentication": "no",
    }, config


def check_data_volume(vm: VM) -> None:
    mount = ssh_lines(vm, f"findmnt -n -o SOURCE,FSTYPE,LABEL --target {DATA_MOUNT}")
    assert mount and mount[0].split() == [DATA_DEVICE, "ext4", DATA_LABEL], mount
    for path in (PG_DATA, *(f"{DATA_MOUNT}/redis/{n}" for n in DOCK_INSTANCES)):
        assert ssh_lines(vm, f"sudo findmnt -n -o SOURCE --target {path}") == [DATA_DEVICE]
    for path in (QDRANT_STORAGE, OLLAMA_MODELS):
        assert ssh_lines(vm, f"sudo findmnt -n -o SOURCE --target {path}") == [DATA_DEVICE]
    # ...and the services really use those directories.
    data_dir = ssh_lines(vm, "sudo -u postgres psql -XAtc 'SHOW data_directory'")
    assert data_dir == [PG_DATA], data_dir
    for name in DOCK_INSTANCES:
        cwd = ssh_lines(
            vm,
            "sudo readlink /proc/$(systemctl show -p MainPID --value "
            f"redis-server@{name}.service)/cwd",
        )
        assert cwd == [f"{DATA_MOUNT}/redis/{name}"], cwd
    found = ssh_lines(vm, f"sudo ls {OLLAMA_MODELS}/manifests/registry.ollama.ai/library")
    assert set(MODELS) <= set(found), found


def check_shared_host(vm: VM, fleet: Fleet) -> None:
    check_units(vm)
    check_postgres(vm, fleet)
    check_redis(vm, fleet)
    check_qdrant_and_ollama(vm, fleet)
    check_firewall(vm)
    check_ssh(vm)
    check_data_volume(vm)


def fingerprint(vm: VM) -> dict[str, str]:
    """Hashes and mtimes of what a re-run of a per-instance step would change."""
    files = (
        f"/etc/postgresql/{PG_VERSION}/main /etc/redis /etc/qdrant /etc/owuibuild "
        "/etc/systemd/system /usr/local/lib/owuibuild /etc/ssh/sshd_config.d /etc/sudoers.d"
    )
    script = f"""
set -e
echo "roles $(runuser -u postgres -- psql -XAtc \\
  'SELECT rolname, rolcanlogin, rolsuper, rolpassword FROM pg_authid ORDER BY 1' | sha256sum)"
echo "databases $(runuser -u postgres -- psql -XAtc \\
  'SELECT datname, datdba, datacl FROM pg_database ORDER BY 1' | sha256sum)"
echo "system-id $(/usr/lib/postgresql/{PG_VERSION}/bin/pg_controldata {PG_DATA} \\
  | sed -n 's/^Database system identifier: *//p')"
find {files} -type f -print0 | sort -z | xargs -0 sha256sum | awk '{{print "file:" $2, $1}}'
find {files} -type f -print0 | sort -z | xargs -0 stat -c 'mtime:%n %Y'
echo "installs $(grep -c 'owuibuild: installed' /var/log/cloud-init-output.log || true)"
echo "initdb $(grep -c '{INITDB_SAYS}' /var/log/cloud-init-output.log || true)"
"""
    lines = vm.ssh(["sudo", "sh", "-c", script], check=True, timeout=120).stdout.splitlines()
    return dict(line.partition(" ")[::2] for line in lines if line)


# -- the tests -----------------------------------------------------------------------------------


def test_vanilla_boot(vanilla: VM, fleet: Fleet, mirror: Any, state: dict[str, Any]) -> None:
    timing = boot_to_ready(vanilla, fleet, "vanilla")
    check_shared_host(vanilla, fleet)
    fetched = {p.lstrip("/") for p in mirror.requests}
    assert set(release_files(OLLAMA_VERSION, QDRANT_VERSION)) <= fetched, mirror.requests
    state["vanilla"] = timing
    print(f"vanilla boot-to-ready: {timing.ready_s:.0f} s")


def test_reboot_changes_nothing(vanilla: VM, fleet: Fleet, state: dict[str, Any]) -> None:
    if "vanilla" not in state:
        pytest.fail("the vanilla boot did not come up (see test_vanilla_boot)")
    before = fingerprint(vanilla)
    assert before["installs"] == "2", before["installs"]  # ollama and qdrant, once
    assert before["initdb"] == "1", before["initdb"]
    seconds = vanilla.reboot(timeout=900)
    assert_cloud_init_clean(vanilla)
    wait_until_ready(vanilla, fleet)
    print(f"reboot: ssh back after {seconds:.0f} s")
    check_shared_host(vanilla, fleet)
    after = fingerprint(vanilla)
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()}
    changed = {k: v for k, v in changed.items() if v[0] != v[1]}
    assert not changed, changed
    state["rebooted"] = True


def test_replacement_keeps_data(
    vanilla: VM, fleet: Fleet, data_disk: Path, state: dict[str, Any]
) -> None:
    if "vanilla" not in state:
        pytest.fail("the vanilla boot did not come up (see test_vanilla_boot)")
    token = pysecrets.token_hex(8)
    psql(
        vanilla,
        fleet,
        "alpha",
        "CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL); "
        f"INSERT INTO notes SELECT n, '{token}-' || n FROM generate_series(1, 100) AS n;",
    )
    assert redis_call(vanilla, fleet, "alpha", "SET", "alpha:replacement", token) == "OK"
    vanilla.ssh(f"echo {token} | sudo tee {MARKER} >/dev/null", check=True)
    before = fingerprint(vanilla)
    uuid = ssh_lines(vanilla, f"sudo blkid -s UUID -o value {DATA_DEVICE}")
    machine_id = ssh_lines(vanilla, "cat /etc/machine-id")
    # A clean power-off: redis-server writes its RDB (save points are set) to the volume.
    vanilla.shutdown(timeout=300)

    with VM(
        ensure_base_image(SUITE),
        fleet.seed_iso,
        forwards=dict.fromkeys(fleet.guest_ports),
        data_disk=data_disk,
        memory_mb=MEMORY_MB,
        name="shared-replaced",
    ) as vm:
        timing = boot_to_ready(vm, fleet, "replacement")
        assert ssh_lines(vm, "cat /etc/machine-id") != machine_id, "not a new root disk"
        assert ssh_lines(vm, f"sudo blkid -s UUID -o value {DATA_DEVICE}") == uuid
        assert ssh_lines(vm, f"sudo cat {MARKER}") == [token]
        rows = psql(vm, fleet, "alpha", "SELECT count(*), min(body), max(body) FROM notes")
        assert rows == f"100|{token}-1|{token}-99", rows
        assert pg_login(vm, fleet, "alpha", "alpha").state is State.OK
        reply = redis_call(vm, fleet, "alpha", "GET", "alpha:replacement")
        assert reply == token.encode(), reply
        assert ssh_lines(vm, f"sudo test -s {DATA_MOUNT}/redis/alpha/dump.rdb && echo saved")
        after = fingerprint(vm)
        assert after["system-id"] == before["system-id"], "PostgreSQL was initialised again"
        assert after["initdb"] == "0", "initdb ran on a volume that held a cluster"
        assert after["roles"] == before["roles"], "roles changed"
        check_shared_host(vm, fleet)
    print(f"replacement boot-to-ready: {timing.ready_s:.0f} s")
