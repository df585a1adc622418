"""Containers tier: replacing an Open WebUI instance keeps its users' data.

Hosts are replaced, never changed, so an instance's container and the host-side mount of its
DATA_DIR volume are thrown away on every upgrade; what must survive is its database on the
shared host and its data directory on the host's data volume. This test does that to one
instance: sign in as the admin it made at its first start, create a chat and upload a file, then
`docker compose down --volumes` (the container AND the compose volume that bind-mounts the
data directory are removed), bring it up again from the same generated bundle (a fresh
container and a freshly created mount of the same directory, standing in for the data volume
of a new host), sign in with the same credentials, and find the chat and the file again.

Everything else is the fleet of tests/containers/test_instances_live.py, imported rather than
copied: REAL PostgreSQL and Redis from the generated shared-host configuration in a "shared
host" container, TEST DOUBLES of Ollama (behind the real Caddy as its TLS terminator) and
Qdrant (over HTTPS, with the fleet's server key or a collection-scoped token; the generated
qdrant-collections.sh makes the instance's collections before it starts), the Open WebUI
image, and a compose override that only attaches the container to the test network,
publishes it on 127.0.0.1, points the data volume at a temporary directory and binds the
test's fleet CA and CA bundle. This module uses its own subnet and one instance, so it can run
beside that module.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from owuibuild.plan import CA_BUNDLE, FLEET_CA
from test_instances_live import Fleet, Running, http, live_fleet, run, sign_in_as_admin

pytestmark = pytest.mark.containers

SUBNET = "10.213.9.0/24"
GATEWAY = "10.213.9.1"
BLUEPRINT = """\
apiVersion: owuibuild/v1
name: replacetest
os: {distro: debian-12, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.213.9.0/24]
network: {cidr: 10.213.9.0/24, gateway: 10.213.9.1, dns: [10.213.9.1]}
shared:
  host: {name: shared, address: 10.213.9.24, memory_gb: 32, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.213.9.30, memory_gb: 8, data_volume: {label: owui-data}}
instances:
  - {name: keeper, host: web-a, port: 3001, admin: {email: ada@keeper.test, name: Ada}}
"""
ADMIN_EMAIL = "ada@keeper.test"
UPLOAD = b"notes that must outlive the container\n" * 64


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("replace")
    with live_fleet(BLUEPRINT, SUBNET, GATEWAY, workdir, start=False) as running:
        yield running


def data_dir(running: Running) -> Path:
    """The host directory the override binds as DATA_DIR (the data volume's stand-in)."""
    return running.bundle_dir.parent.parent / "data" / running.inst.name


def container_ids(running: Running) -> list[str]:
    return running.compose("ps", "--all", "--quiet").stdout.split()


def volumes(running: Running) -> list[str]:
    out = run("docker", "volume", "ls", "--quiet", "--filter",
              f"label=com.docker.compose.project={running.project}")  # fmt: skip
    return out.stdout.split()


def upload(url: str, token: str, name: str, data: bytes) -> tuple[int, Any]:
    """POST a file as multipart/form-data (process=false: keep it, no embedding)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(f"{url}/api/v1/files/?process=false", data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def download(url: str, token: str) -> bytes:
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        data: bytes = response.read()
        return data


def test_replaced_instance_keeps_its_users_chats_and_files(fleet: Fleet) -> None:
    (running,) = fleet.instances.values()
    running.compose("up", "--detach", "--wait")
    first_container = container_ids(running)
    assert len(first_container) == 1

    # Data through the real interfaces: the generated admin signs in; a chat; a file.
    status, admin = sign_in_as_admin(fleet, running)
    assert status == 200 and admin["role"] == "admin", (status, admin)
    chat = {
        "title": "Before the replacement",
        "models": [],
        "messages": [{"id": "m1", "role": "user", "content": "remember me", "timestamp": 1}],
        "history": {
            "currentId": "m1",
            "messages": {"m1": {"id": "m1", "role": "user", "content": "remember me"}},
        },
    }
    status, created = http("POST", f"{running.url}/api/v1/chats/new", {"chat": chat},
                           token=admin["token"])  # fmt: skip
    assert status == 200 and created["id"], (status, created)
    status, stored = upload(running.url, admin["token"], "keep.txt", UPLOAD)
    assert status == 200, stored
    # The file is on the host's data directory, not in the container's own layer.
    on_host = [p for p in (data_dir(running) / "uploads").iterdir() if p.name.endswith("keep.txt")]
    assert len(on_host) == 1 and on_host[0].read_bytes() == UPLOAD

    # Replace: the container and the volume (the host-side mount) go; the directory stays.
    running.compose("down", "--volumes", "--timeout", "20")
    assert container_ids(running) == []
    assert volumes(running) == []
    assert on_host[0].exists()

    # A fresh container from the same bundle, with a newly created mount of the same directory.
    running.compose("up", "--detach", "--wait")
    second_container = container_ids(running)
    assert len(second_container) == 1 and second_container != first_container
    assert len(volumes(running)) == 1
    mounts = run("docker", "inspect", "-f", "{{json .Mounts}}", second_container[0]).stdout
    # The data directory, the fleet CA and the CA bundle (both read-only).
    destinations = {m["Destination"]: m for m in json.loads(mounts)}
    assert set(destinations) == {"/app/backend/data", FLEET_CA, CA_BUNDLE}
    assert destinations[FLEET_CA]["RW"] is False
    assert destinations[CA_BUNDLE]["RW"] is False

    # The same credentials still sign in, and the chat and the file are still there.
    status, again = sign_in_as_admin(fleet, running)
    assert status == 200 and again["id"] == admin["id"] and again["role"] == "admin"
    token = again["token"]
    status, chats = http("GET", f"{running.url}/api/v1/chats/", token=token)
    assert status == 200
    assert [(c["id"], c["title"]) for c in chats] == [(created["id"], "Before the replacement")]
    status, full = http("GET", f"{running.url}/api/v1/chats/{created['id']}", token=token)
    assert status == 200
    assert full["chat"]["messages"][0]["content"] == "remember me"
    content = download(f"{running.url}/api/v1/files/{stored['id']}/content", token)
    assert content == UPLOAD
    # The replacement's first start found a user: no second admin was created.
    status, users = http("GET", f"{running.url}/api/v1/users/", token=token)
    assert status == 200
    listed = users["users"] if isinstance(users, dict) else users
    assert [u["email"] for u in listed] == [ADMIN_EMAIL]
    # Sign-up stays closed: a newcomer gets no account at all.
    newcomer = {"name": "Eve", "email": "eve@keeper.test", "password": "pw-eve-keeper-Aa1!"}
    status, user = http("POST", f"{running.url}/api/v1/auths/signup", newcomer)
    assert status == 403, (status, user)
