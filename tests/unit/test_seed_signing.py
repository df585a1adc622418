"""The signed seed: the fleet's seed-signing key in the secret store, each host's seed
generation, the signed seed manifest on the seed ISO, the live/replacement classification that
render reports, and the host-side verifier run for real (python3 and openssl) against seeds the
real pipeline rendered.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import REPO, require_tool
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fleetdoc import BASE, edit
from owuibuild import secrets as store
from owuibuild import seed_manifest
from owuibuild.cli import cli
from owuibuild.pipeline import compile_blueprint
from owuibuild.plan import SEED_SIGNING_KEY
from owuibuild.seed_signing import signing_key
from owuibuild.targets.hosts import unpack_user_data
from owuibuild.verify import verify

pytestmark = pytest.mark.unit

KEY_NAME = SEED_SIGNING_KEY.name
VERIFIER = "/usr/local/lib/owuibuild/seed-verify"
SEED_NAMES = (
    "user-data",
    "meta-data",
    "network-config",
    "owuibuild-seed.json",
    "owuibuild-seed.sig",
)
THIRD = "  - {name: three, host: web-a, port: 3002}\n"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def written(user_data: bytes) -> dict[str, str]:
    doc = yaml.safe_load(unpack_user_data(user_data))
    return {f["path"]: f["content"] for f in doc["write_files"]}


def seed_json(out: Path, host: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "hosts" / host / "owuibuild-seed.json").read_bytes())
    return doc


@pytest.fixture
def blueprint(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yml"
    path.write_text(BASE)
    return path


def render(blueprint: Path, out: Path, *extra: str) -> Result:
    result = run("render", str(blueprint), "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    return result


# -- the key ----------------------------------------------------------------------------------------


def test_the_key_is_made_once_in_the_private_store_and_kept(
    blueprint: Path, tmp_path: Path
) -> None:
    render(blueprint, tmp_path / "out")
    path = store.secrets_path(blueprint)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, _ = store.read(path)
    assert first is not None and store.SECRET_PATTERN.match(first[KEY_NAME])
    render(blueprint, tmp_path / "out")
    again, _ = store.read(path)
    assert again is not None and again[KEY_NAME] == first[KEY_NAME]


def test_each_host_gets_the_fleet_public_key_and_never_the_private_one(
    blueprint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    values, _ = store.read(store.secrets_path(blueprint))
    assert values is not None
    key = signing_key(values[KEY_NAME])
    private_line = next(x for x in key.private_pem.splitlines() if not x.startswith("-----"))
    for host in ("shared", "web-a", "web-b"):
        on_host = written((out / "hosts" / host / "user-data").read_bytes())
        assert on_host[seed_manifest.PUBLIC_KEY_PATH] == key.public_pem
    # Not in any file: secret (0600) ones included, since no host may sign.
    for rel, data in files(out).items():
        assert values[KEY_NAME].encode() not in data, rel
        assert private_line.encode() not in data, rel


def test_verify_refuses_the_signing_key_even_in_a_secret_file() -> None:
    from owuibuild.targets import Artifact

    secret = "k" * 43
    problems = verify(
        [Artifact("hosts/h/user-data", f"#cloud-config\na: {secret}\n".encode(), secret=True)],
        [secret],
        nowhere=[secret],
    )
    assert [p.message for p in problems] == [
        "the fleet's seed-signing key would be written to hosts/h/user-data"
    ]
    assert (
        verify(
            [Artifact("hosts/h/user-data", b"#cloud-config\na: 1\n", secret=True)],
            [secret],
            nowhere=[secret],
        )
        == []
    )


def test_the_key_stays_out_of_the_terminal(blueprint: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    results = [run("render", str(blueprint), "-o", out)]
    blueprint.write_text(BASE + THIRD)
    results += [
        run("render", str(blueprint), "-o", out, *args)
        for args in ([], ["--format", "json"], ["--check"])
    ]
    values, _ = store.read(store.secrets_path(blueprint))
    assert values is not None
    for result in results:
        assert values[KEY_NAME] not in result.output


# -- the signed manifest ---------------------------------------------------------------------------


def test_the_manifest_names_the_seed_and_its_signature_verifies(
    blueprint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    values, _ = store.read(store.secrets_path(blueprint))
    assert values is not None
    public = load_pem_public_key(signing_key(values[KEY_NAME]).public_pem.encode())
    assert isinstance(public, Ed25519PublicKey)
    for host in ("shared", "web-a", "web-b"):
        base = out / "hosts" / host
        raw = (base / "owuibuild-seed.json").read_bytes()
        public.verify((base / "owuibuild-seed.sig").read_bytes(), raw)  # raises if it does not
        doc = json.loads(raw)
        assert raw == (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
        assert doc["host"] == host and doc["fleet"] == "fleet" and doc["generation"] == 1
        assert doc["format"] == "owuibuild-seed/1"
        assert doc["files"] == {
            name: hashlib.sha256((base / name).read_bytes()).hexdigest()
            for name in ("user-data", "meta-data", "network-config")
        }
        applied = json.loads(written((base / "user-data").read_bytes())[seed_manifest.APPLIED_PATH])
        assert applied == {
            "fleet": "fleet",
            "host": host,
            "generation": 1,
            "content": doc["content"],
            "replacement_key": doc["replacement_key"],
            "live_files": doc["live"]["files"],
        }
        # non-secret files: the manifest and signature hold digests only
        assert stat.S_IMODE((base / "owuibuild-seed.json").stat().st_mode) == 0o644


def test_the_seed_iso_carries_the_manifest_and_signature(blueprint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO((out / "hosts" / "web-a" / "seed.iso").read_bytes()))
    try:
        for name in SEED_NAMES:
            got = io.BytesIO()
            iso.get_file_from_iso_fp(got, rr_path=f"/{name}")
            assert got.getvalue() == (out / "hosts" / "web-a" / name).read_bytes(), name
    finally:
        iso.close()


def test_the_seed_command_packs_the_manifest_too(blueprint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    host = out / "hosts" / "web-b"
    rendered = (host / "seed.iso").read_bytes()
    (host / "seed.iso").unlink()
    assert run("seed", str(host)).exit_code == 0
    assert (host / "seed.iso").read_bytes() == rendered


def test_the_seed_brings_the_verifier_and_no_image_holds_it(
    blueprint: Path, tmp_path: Path
) -> None:
    """The verifier comes with each seed (a golden image need not be baked again for a new
    one), and no image holds it or the fleet's key."""
    out = tmp_path / "out"
    render(blueprint, out)
    script = (REPO / "builder" / "data" / "seed_verify.py").read_text()
    values, _ = store.read(store.secrets_path(blueprint))
    assert values is not None
    public = signing_key(values[KEY_NAME]).public_pem.splitlines()[1]
    for host in ("shared", "web-a"):
        assert written((out / "hosts" / host / "user-data").read_bytes())[VERIFIER] == script
    for image in ("shared", "instance-host"):
        install = (out / "packer" / "scripts" / f"{image}-install.sh").read_text()
        assert VERIFIER not in install and "def verify_signature" not in install, image
        assert public not in install  # an image holds no fleet's key


# -- generations -------------------------------------------------------------------------------------


def generations(out: Path) -> dict[str, int]:
    return {host: seed_json(out, host)["generation"] for host in ("shared", "web-a", "web-b")}


def test_generation_rises_only_with_the_seed_and_output_stays_reproducible(
    blueprint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    assert generations(out) == {"shared": 1, "web-a": 1, "web-b": 1}
    before, store_before = files(out), store.secrets_path(blueprint).read_bytes()
    render(blueprint, out)
    assert files(out) == before and store.secrets_path(blueprint).read_bytes() == store_before
    assert "up to date" in run("render", str(blueprint), "-o", str(out), "--check").output

    blueprint.write_text(BASE + THIRD)  # web-a gets an instance; shared its database
    render(blueprint, out)
    assert generations(out) == {"shared": 2, "web-a": 2, "web-b": 1}
    assert files(out)["hosts/web-b/user-data"] == before["hosts/web-b/user-data"]

    blueprint.write_text(BASE)  # back again: new seeds all the same, never an old number
    render(blueprint, out)
    assert generations(out) == {"shared": 3, "web-a": 3, "web-b": 1}
    again = files(out)
    render(blueprint, out)
    assert files(out) == again


def test_check_writes_nothing_and_fails_when_a_generation_would_change(
    blueprint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    blueprint.write_text(BASE + THIRD)
    render(blueprint, tmp_path / "elsewhere")  # makes the new secrets: --check needs them
    blueprint.write_text(BASE)
    render(blueprint, tmp_path / "elsewhere")
    secrets_before, out_before = store.secrets_path(blueprint).read_bytes(), files(out)
    # `out` holds generation 1; the store is at 3 now, with BASE's content: generation 3.
    check = run("render", str(blueprint), "-o", str(out), "--check")
    assert check.exit_code == 1
    assert "hosts/shared/owuibuild-seed.json" in check.output
    assert store.secrets_path(blueprint).read_bytes() == secrets_before
    assert files(out) == out_before


def test_the_store_keeps_the_records_through_new_secrets_and_removed_hosts(
    blueprint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    render(blueprint, out)
    path = store.secrets_path(blueprint)
    _, seeds, problems = store.read_store(path)
    assert problems == [] and {h: r.generation for h, r in seeds.items()} == {
        "shared": 1,
        "web-a": 1,
        "web-b": 1,
    }
    # A new instance adds secrets (load_or_create writes the file) and changes two seeds.
    blueprint.write_text(BASE + THIRD)
    render(blueprint, out)
    values, seeds, _ = store.read_store(path)
    assert values is not None and "instances.three.db_password" in values
    assert {h: r.generation for h, r in seeds.items()} == {"shared": 2, "web-a": 2, "web-b": 1}
    # web-b leaves the blueprint: its record stays, and comes back where it was.
    without_b = edit(
        BASE,
        "  - {name: web-b, address: 10.0.5.21, memory_gb: 64, data_volume: {label: owui-data}}\n",
        "",
    )
    without_b = edit(
        without_b,
        "  - {name: two, host: web-b, port: 3001}\n",
        "  - {name: two, host: web-a, port: 3005}\n",
    )
    blueprint.write_text(without_b)
    render(blueprint, out)
    _, seeds, _ = store.read_store(path)
    assert seeds["web-b"].generation == 1
    # The records are no secrets: read() leaves them out, and they are marked as such.
    values, _ = store.read(path)
    assert values is not None and not any(k.startswith(store.SEEDS_KEY) for k in values)
    assert "# Not secret" in path.read_text()


def test_an_unreadable_record_is_a_located_error(blueprint: Path, tmp_path: Path) -> None:
    render(blueprint, tmp_path / "out")
    path = store.secrets_path(blueprint)
    text = path.read_text()
    broken = text.replace("    generation: 1\n", "    generation: one\n", 1)
    assert broken != text
    path.write_text(broken)
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    line = (
        broken.splitlines().index("  shared:") + 1 if "  shared:" in broken.splitlines() else None
    )
    assert "the seed record is unreadable" in result.output
    assert line is not None and f"fleet.secrets.yml:{line}:3" in result.output


# -- live or replacement -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example", ["seed-example.yml", "multi-host.yml", "homelab.yml", "scale-out.yml"]
)
@pytest.mark.parametrize("where", ["first", "last"])
def test_adding_an_instance_is_live_on_every_host(example: str, where: str, tmp_path: Path) -> None:
    """At the end of the list, or at its head (the others keep their Redis ports and Docker
    networks by name: test_sticky_allocations holds their files byte-identical)."""
    doc = yaml.safe_load((REPO / "blueprints" / example).read_text())
    doc["platform"] = "nocloud"  # a platform that takes seeds live (multi-host's is a cloud)
    blueprint = tmp_path / example
    blueprint.write_text(yaml.safe_dump(doc))
    first = compile_blueprint(blueprint)
    assert first.ok and first.plan is not None
    host = first.plan.instances[0].host.name
    added = {"name": "added", "host": host, "port": 3999, "url": "https://added.example.org"}
    doc["instances"].insert(0 if where == "first" else len(doc["instances"]), added)
    blueprint.write_text(yaml.safe_dump(doc))
    second = compile_blueprint(blueprint)
    assert second.ok, [d.as_dict() for d in second.diagnostics]
    kinds = {c.host: (c.kind, c.changed) for c in second.seed_changes}
    assert host in kinds and first.plan.postgres_host.name in kinds
    assert all(kind == "live" for kind, _ in kinds.values()), kinds


def test_changing_ollama_models_is_live(blueprint: Path) -> None:
    assert compile_blueprint(blueprint).ok
    blueprint.write_text(
        edit(
            BASE,
            "  postgres: {max_connections: 200}\n",
            "  postgres: {max_connections: 200}\n  ollama: {models: [qwen2.5:3b, llama3.2:1b]}\n",
        )
    )
    compiled = compile_blueprint(blueprint)
    assert [(c.host, c.kind) for c in compiled.seed_changes] == [("shared", "live")]


@pytest.mark.parametrize(
    ("old", "new", "host", "changed"),
    [
        ("address: 10.0.5.21", "address: 10.0.5.22", "web-b", "network-config"),
        (
            "name: fleet\n",
            "name: fleet\nos: {distro: debian-12, timezone: Europe/Berlin}\n",
            "web-b",
            "cloud-config:timezone",
        ),
        (
            "  postgres: {max_connections: 200}\n",
            "  postgres: {max_connections: 250}\n",
            "shared",
            "/etc/owuibuild/postgresql/postgresql.conf",
        ),
    ],
)
def test_other_changes_need_a_replacement_and_say_what(
    blueprint: Path, tmp_path: Path, old: str, new: str, host: str, changed: str
) -> None:
    render(blueprint, tmp_path / "out")
    blueprint.write_text(edit(BASE, old, new))
    result = render(blueprint, tmp_path / "out")
    line = next(x for x in result.output.splitlines() if x.startswith(f"seed of {host}:"))
    assert line.startswith(
        f"seed of {host}: generation 1 -> 2, needs a host replacement (changed: "
    )
    assert changed in line


def test_a_distribution_release_change_names_the_install_steps(
    blueprint: Path, tmp_path: Path
) -> None:
    render(blueprint, tmp_path / "out")
    blueprint.write_text(edit(BASE, "name: fleet\n", "name: fleet\nos: {distro: debian-13}\n"))
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"), "--format", "json")
    assert result.exit_code == 0, result.output
    seeds = {s["host"]: s for s in json.loads(result.stdout)["seeds"]}
    assert set(seeds) == {"shared", "web-a", "web-b"}
    for s in seeds.values():
        assert (
            s["apply"] == "replacement" and "install-steps" in s["changed"] and s["previous"] == 1
        )


def test_render_reports_live_changes_deterministically_without_secrets(
    blueprint: Path, tmp_path: Path
) -> None:
    first = render(blueprint, tmp_path / "out")
    assert "seed of web-a: generation 1, for a new host" in first.output
    blueprint.write_text(BASE + THIRD)
    check = run("render", str(blueprint), "-o", str(tmp_path / "out"), "--check")
    assert check.exit_code == 1  # new secrets: nothing to compare yet
    result = render(blueprint, tmp_path / "out")
    lines = [x for x in result.output.splitlines() if x.startswith("seed of ")]
    assert lines == [
        "seed of shared: generation 1 -> 2, can be re-applied live",
        "seed of web-a: generation 1 -> 2, can be re-applied live",
    ]
    values, _ = store.read(store.secrets_path(blueprint))
    assert values and not any(v in result.output for v in values.values())


# -- the verifier, run for real -------------------------------------------------------------------


@dataclass
class Host:
    """A host's /etc/owuibuild as its first boot wrote it from a rendered seed."""

    root: Path
    script: Path
    public_key: Path
    applied: Path

    def verify(self, cidata: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(self.script), "--public-key", str(self.public_key)]
        argv += ["--applied", str(self.applied), str(cidata)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def booted(user_data: bytes, root: Path) -> Host:
    on_host = written(user_data)
    root.mkdir(parents=True)
    paths = {}
    for name, path in (
        ("script", VERIFIER),
        ("public_key", seed_manifest.PUBLIC_KEY_PATH),
        ("applied", seed_manifest.APPLIED_PATH),
    ):
        paths[name] = root / Path(path).name
        paths[name].write_text(on_host[path])
    return Host(root, **paths)


def cidata(host_dir: Path, where: Path) -> Path:
    """A host's seed files as a mounted cidata volume shows them."""
    where.mkdir(parents=True)
    for name in SEED_NAMES:
        if (host_dir / name).exists():
            shutil.copy(host_dir / name, where / name)
    return where


@dataclass
class Fleet:
    tmp: Path
    blueprint: Path
    gen1: Path  # out/ of generation 1
    gen2: Path  # web-a got an instance: a live change

    def secret(self) -> str:
        values, _ = store.read(store.secrets_path(self.blueprint))
        assert values is not None
        return values[KEY_NAME]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    require_tool("openssl")
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    render(blueprint, tmp_path / "gen1")
    blueprint.write_text(BASE + THIRD)
    render(blueprint, tmp_path / "gen2")
    return Fleet(tmp_path, blueprint, tmp_path / "gen1", tmp_path / "gen2")


def refused(done: subprocess.CompletedProcess[str], reason: str) -> int:
    """The verifier's exit code, once its output is one refusal line that gives ``reason``."""
    assert done.stdout == "", (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("owuibuild-seed-verify: refused: "), done.stderr
    assert reason in lines[0], lines[0]
    return done.returncode


def test_verifier_takes_a_newer_live_seed(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    done = host.verify(cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "apply 2\n", "")


def test_verifier_reads_the_seed_iso_as_a_host_mounts_it(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO((fleet.gen2 / "hosts/web-a/seed.iso").read_bytes()))
    mounted = fleet.tmp / "mnt"
    mounted.mkdir()
    for name in SEED_NAMES:
        with (mounted / name).open("wb") as fh:
            iso.get_file_from_iso_fp(fh, rr_path=f"/{name}")
    iso.close()
    assert host.verify(mounted).stdout == "apply 2\n"


def test_verifier_treats_the_applied_seed_as_current(fleet: Fleet) -> None:
    host = booted((fleet.gen2 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    done = host.verify(cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "current 2\n", "")


@pytest.mark.parametrize("missing", ["owuibuild-seed.sig", "owuibuild-seed.json"])
def test_verifier_refuses_an_unsigned_seed(fleet: Fleet, missing: str) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    (cd / missing).unlink()
    assert refused(host.verify(cd), f"the seed is unsigned: {cd / missing} is missing") == 3


def test_verifier_refuses_a_seed_signed_by_another_key(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    other = signing_key("another-fleet-secret-" + "x" * 30)
    (cd / "owuibuild-seed.sig").write_bytes(other.sign((cd / "owuibuild-seed.json").read_bytes()))
    assert (
        refused(host.verify(cd), "owuibuild-seed.sig does not verify against the fleet's key") == 4
    )


def test_verifier_refuses_a_manifest_changed_after_signing(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    signed = (cd / "owuibuild-seed.json").read_bytes()
    (cd / "owuibuild-seed.json").write_bytes(signed.replace(b'"generation": 2', b'"generation": 9'))
    assert refused(host.verify(cd), "does not verify") == 4


def test_verifier_refuses_tampered_user_data(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    (cd / "user-data").write_bytes((cd / "user-data").read_bytes() + b"runcmd: [[touch, /pwned]]\n")
    assert refused(host.verify(cd), "user-data differs from the signed manifest") == 6


def test_verifier_refuses_an_older_generation(fleet: Fleet) -> None:
    host = booted((fleet.gen2 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    assert (
        refused(
            host.verify(cidata(fleet.gen1 / "hosts/web-a", fleet.tmp / "cd")),
            "the seed's generation 1 is older than the applied 2",
        )
        == 7
    )


def test_verifier_refuses_the_same_generation_with_other_content(fleet: Fleet) -> None:
    """A store restored from an old backup would number a new seed as an applied one."""
    host = booted((fleet.gen2 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    doc = json.loads((cd / "owuibuild-seed.json").read_bytes())
    doc["content"] = "0" * 64
    signed = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    (cd / "owuibuild-seed.json").write_bytes(signed)
    (cd / "owuibuild-seed.sig").write_bytes(signing_key(fleet.secret()).sign(signed))
    assert refused(host.verify(cd), "is the applied one but its content is not") == 7


def test_verifier_refuses_another_hosts_seed(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    assert (
        refused(
            host.verify(cidata(fleet.gen1 / "hosts/web-b", fleet.tmp / "cd")),
            "the seed is for host web-b of fleet fleet, this is host web-a of fleet fleet",
        )
        == 5
    )


def test_verifier_refuses_a_replacement_only_change(fleet: Fleet) -> None:
    fleet.blueprint.write_text(
        edit(
            BASE + THIRD,
            "name: fleet\n",
            "name: fleet\nos: {distro: debian-12, timezone: Europe/Berlin}\n",
        )
    )
    result = render(fleet.blueprint, fleet.tmp / "gen3")
    assert (
        "seed of web-a: generation 2 -> 3, needs a host replacement (changed: cloud-config:timezone)"
        in result.output
    )
    host = booted((fleet.gen2 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    assert (
        refused(
            host.verify(cidata(fleet.tmp / "gen3/hosts/web-a", fleet.tmp / "cd")),
            "this change needs a host replacement",
        )
        == 8
    )


def test_verifier_cannot_check_without_the_fleet_key(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    host.public_key.unlink()
    assert (
        refused(
            host.verify(cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")),
            "this host trusts no seed",
        )
        == 2
    )


def test_verifier_changes_nothing(fleet: Fleet) -> None:
    host = booted((fleet.gen1 / "hosts/web-a/user-data").read_bytes(), fleet.tmp / "host")
    cd = cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd")
    (cd / "user-data").write_bytes(b"#cloud-config\n")
    before = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*host.root.iterdir(), *cd.iterdir()]
    }
    assert host.verify(cd).returncode == 6
    assert host.verify(cidata(fleet.gen2 / "hosts/web-a", fleet.tmp / "cd2")).returncode == 0
    after = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*host.root.iterdir(), *cd.iterdir()]
    }
    assert after == before


def test_on_a_cloud_a_host_gets_no_verifier_and_every_change_is_a_replacement(
    blueprint: Path, tmp_path: Path
) -> None:
    blueprint.write_text(edit(BASE, "name: fleet\n", "name: fleet\nplatform: openstack\n"))
    out = tmp_path / "out"
    render(blueprint, out)
    on_host = written((out / "hosts/web-a/user-data").read_bytes())
    assert VERIFIER not in on_host and seed_manifest.PUBLIC_KEY_PATH not in on_host
    assert seed_manifest.APPLIED_PATH in on_host  # which generation it runs, all the same
    assert seed_json(out, "web-a")["generation"] == 1
    blueprint.write_text(edit(BASE, "name: fleet\n", "name: fleet\nplatform: openstack\n") + THIRD)
    result = render(blueprint, out)
    assert (
        "seed of web-a: generation 1 -> 2, needs a host replacement "
        "(on openstack a running host takes no new seed)"
    ) in result.output
