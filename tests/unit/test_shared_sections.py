"""Unit tests of the shared-host sections: what each contributes, taken from the plan, with
secrets only in 0600 files owned by the service user, never in a command line."""

from __future__ import annotations

import gzip
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Rendered
from owuibuild import hostconfig, quoting
from owuibuild.hostconfig import _first_boot as first_boot
from owuibuild.hostconfig import firewall, ollama, ollama_tls, postgres, qdrant, redis, seed_trust
from owuibuild.plan import DATA_MOUNT, SERVER_CERT, SERVER_KEY, FirewallRule
from owuibuild.targets import hosts

pytestmark = pytest.mark.unit


def doc(rendered: Rendered, host: str) -> dict[str, Any]:
    loaded: dict[str, Any] = rendered.user_data(host)
    return loaded


def files(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in d.get("write_files", [])}


@pytest.fixture
def seed(render_example: Callable[[str], Rendered]) -> Rendered:
    return render_example("seed-example.yml")


def test_secrets_only_in_0600_files_owned_by_their_service(seed: Rendered) -> None:
    secret_values = seed.secrets.all_values()  # type: ignore[attr-defined]
    d = doc(seed, "ai-shared")
    owners = {}
    for f in d["write_files"]:
        if any(v in f["content"] for v in secret_values):
            assert f["permissions"] == "0600", f["path"]
            assert f.get("defer") is True, f["path"]
            owners[f["path"]] = f["owner"]
    assert owners["/etc/qdrant/config.yaml"] == "qdrant:qdrant"
    # PostgreSQL gets SCRAM verifiers and Redis SHA-256 hashes, not the passwords themselves;
    # their files stay private all the same.
    for path, owner in (
        ("/etc/owuibuild/postgresql/init.sql", "postgres:postgres"),
        ("/etc/redis/redis-webui1.conf", "redis:redis"),
    ):
        assert path not in owners
        assert files(d)[path]["permissions"] == "0600"
        assert files(d)[path]["owner"] == owner
    # No secret on a command line: test_security_properties scans every host of every example.


def test_install_steps_need_no_secret_and_no_configuration(seed: Rendered) -> None:
    plan, secrets = seed.plan, seed.secrets
    for section in (qdrant, ollama):
        part = section.part(plan, plan.shared, secrets)  # type: ignore[attr-defined]
        assert part is not None and len(part.install) == 1
        script = next(f for f in part.files if f.path == part.install[0][1])
        assert not any(v in script.content for v in secrets.all_values())  # type: ignore[attr-defined]
        assert script.permissions == "0755" and not script.defer
        artifact = section.artifact(plan)
        assert f"SHA256={artifact.sha256}" in script.content
        # the checksum is verified before anything is extracted
        assert script.content.index("sha256sum --check --quiet -") < script.content.index("tar ")
        assert "already installed" in script.content
        assert artifact.url(plan.fleet.mirror) in script.content  # type: ignore[attr-defined]


def test_a_golden_image_loads_its_firewall_at_first_boot_before_ssh(seed: Rendered) -> None:
    """Every host's install steps bake and enable the first-boot firewall unit, and never the
    host's ruleset: the seed writes that, and the unit loads it right after cloud-init's network
    stage wrote it, before sysinit.target (so before sshd and dockerd), at a first boot only."""
    plan, secrets = seed.plan, seed.secrets
    for host in plan.hosts:
        steps = hostconfig.install_steps(hostconfig.parts_for(plan, host, secrets))  # type: ignore[arg-type]
        written = {f.path: f for f in steps.files}
        assert firewall.RULESET not in written, host.name
        unit = written[firewall.FIRST_BOOT_UNIT].content
        path = written[firewall.FIRST_BOOT_PATH].content
        enable = ("systemctl", "enable", "--no-reload", firewall.FIRST_BOOT_PATH_NAME)
        assert enable in steps.commands, host.name
        assert "ConditionFirstBoot=yes" in unit and "ConditionFirstBoot=yes" in path
        # the path unit watches before cloud-init's network stage writes the ruleset, and the
        # unit it starts then holds sysinit.target until the firewall is loaded
        assert f"PathChanged={firewall.RULESET}" in path
        assert f"Unit={firewall.FIRST_BOOT_UNIT_NAME}" in path
        assert "Before=cloud-init-network.service cloud-init.service sysinit.target" in path
        assert "WantedBy=sysinit.target" in path
        assert "Before=sysinit.target" in unit and "After=" not in unit
        assert f"ExecStart=/bin/sh {firewall.FIRST_BOOT_SCRIPT}" in unit
        assert 'exec /usr/sbin/nft -f "$RULESET"' in written[firewall.FIRST_BOOT_SCRIPT].content
        # and the seed writes the same files, so a golden first boot needs no reload for them;
        # before the ruleset, whose appearance starts them (never rewritten while they run)
        seeded = hostconfig.parts_for(plan, host, secrets)  # type: ignore[arg-type]
        order = [f.path for p in seeded for f in p.files]
        for baked in (
            firewall.FIRST_BOOT_UNIT,
            firewall.FIRST_BOOT_PATH,
            firewall.FIRST_BOOT_SCRIPT,
        ):
            assert order.index(baked) < order.index(firewall.RULESET), (host.name, baked)
        for baked in (firewall.FIRST_BOOT_UNIT, firewall.FIRST_BOOT_PATH):
            same = [f for p in seeded for f in p.files if f.path == baked]
            assert [f.content for f in same] == [written[baked].content]


@pytest.mark.parametrize("written_so_far", ["none", "part", "all"])
def test_the_first_boot_firewall_loads_only_the_whole_ruleset(
    seed: Rendered, tmp_path: Path, written_so_far: str
) -> None:
    """The path unit may start the first-boot unit as the ruleset file appears, before
    cloud-init wrote all of it: the script loads it only once its last line is there (here
    with a recording nft, and the file completed in the background where it is not yet)."""
    plan, secrets = seed.plan, seed.secrets
    parts = hostconfig.parts_for(plan, plan.shared, secrets)  # type: ignore[arg-type]
    files = {f.path: f for p in parts for f in p.files}
    whole = files[firewall.RULESET].content
    assert whole.endswith(f"}}\n{firewall.END_MARKER}\n")
    ruleset = tmp_path / "firewall.nft"
    ruleset.write_text({"none": "", "part": whole[: len(whole) // 2], "all": whole}[written_so_far])
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = (
        files[firewall.FIRST_BOOT_SCRIPT]
        .content.replace(f"RULESET={firewall.RULESET}\n", f"RULESET={ruleset}\n")
        .replace("exec /usr/sbin/nft", f"exec {bin_dir}/nft")
    )
    (bin_dir / "nft").write_text(f'#!/bin/sh\necho "$*" >>{calls}\ncat "$2" >>{calls}.read\n')
    (bin_dir / "nft").chmod(0o755)
    proc = subprocess.Popen(["sh", "-c", script], stderr=subprocess.PIPE, text=True)
    if written_so_far != "all":
        time.sleep(0.5)
        assert not calls.exists()  # still waiting for the rest
        ruleset.write_text(whole)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert calls.read_text() == f"-f {ruleset}\n"
    assert (tmp_path / "calls.read").read_text() == whole


def test_a_golden_image_has_a_cluster_template_and_no_default_servers(seed: Rendered) -> None:
    """What the distribution's packages would start by themselves at a golden host's boot (a
    default PostgreSQL cluster, a password-less Redis) is prevented at install time, and the
    install step leaves an empty cluster for the first boot to copy instead of initdb."""
    plan, secrets = seed.plan, seed.secrets
    parts = hostconfig.parts_for(plan, plan.shared, secrets)  # type: ignore[arg-type]
    steps = hostconfig.install_steps(parts)
    written = {f.path: f for f in steps.files}
    assert "create_main_cluster = false" in written[postgres.CREATECLUSTER].content
    # PostgreSQL's own opt-in backup units stay off even when a golden first boot applies presets
    preset = written[postgres.PRESET].content.splitlines()
    assert [f"disable {u}" for u in postgres.PACKAGE_BACKUP_UNITS] == [
        line for line in preset if not line.startswith("#")
    ]
    assert postgres.TEMPLATE_SCRIPT in written
    assert ("/bin/sh", postgres.TEMPLATE_SCRIPT) in steps.commands
    assert ("systemctl", "mask", "--no-reload", "--now", "redis-server.service") in steps.commands
    # not stopped (its stop action flushes every table): masked, so it never starts at boot
    assert ("systemctl", "mask", "--no-reload", "nftables.service") in steps.commands
    script = seed.text("packer/scripts/shared-install.sh")
    # the createcluster setting is in place before the package is installed
    assert script.index(postgres.CREATECLUSTER) < script.index("apt-get --option")
    template = written[postgres.TEMPLATE_SCRIPT].content
    assert f"--pgdata={postgres.template_dir(17)}.new" in template
    assert not any(v in template for v in secrets.all_values())  # type: ignore[attr-defined]
    setup = next(f for p in parts for f in p.files if f.path == postgres.SETUP_SCRIPT).content
    # initdb only where there is no template of this major; the copy is renamed into place
    assert setup.index('cp -a "$TEMPLATE" "$DATA.copy"') < setup.index("/initdb ")
    assert 'mv "$DATA.copy" "$DATA"' in setup


def test_the_firewall_is_not_flushed_by_the_distributions_nftables_unit(
    render_example: Callable[[str], Rendered],
) -> None:
    """nftables.service starts with `flush ruleset` from /etc/nftables.conf (accept-all), at
    boot and unordered with ours: masked on every host at install time, and, were it to run,
    ordered before our unit so that ours is loaded last."""
    rendered = render_example("multi-host.yml")
    for host in rendered.plan.hosts:  # type: ignore[attr-defined]
        parts = hostconfig.parts_for(rendered.plan, host, rendered.secrets)  # type: ignore[arg-type]
        steps = hostconfig.install_steps(parts)
        assert ("systemctl", "mask", "--no-reload", "nftables.service") in steps.commands
        unit = files(doc(rendered, host.name))[firewall.UNIT]["content"]
        assert "\nAfter=nftables.service\n" in unit
        assert "\nBefore=network-pre.target shutdown.target\n" in unit


def test_mirror_replaces_upstream(render_text: Callable[[str], Rendered]) -> None:
    text = REPO_BLUEPRINT + "mirror: http://mirror.test/owui\n"
    d = doc(render_text(text), "ai-shared")
    script = files(d)["/usr/local/lib/owuibuild/install-qdrant.sh"]["content"]
    assert "URL=http://mirror.test/owui/qdrant-x86_64-unknown-linux-musl-v1.19.1.tar.gz" in script
    assert "github.com" not in script


def test_postgres_is_derived_from_the_plan(seed: Rendered) -> None:
    plan = seed.plan
    conf = postgres.postgresql_conf(plan)  # type: ignore[arg-type]
    assert "listen_addresses = '10.0.5.24,localhost'" in conf
    assert "max_connections = 200" in conf
    assert f"data_directory = '{DATA_MOUNT}/postgresql/17/main'" in conf
    # TLS with the host's certificate, as installed by the setup script, and nothing older.
    assert "\nssl = on\n" in conf
    assert "ssl_cert_file = '/etc/postgresql/17/main/server.crt'" in conf
    assert "ssl_key_file = '/etc/postgresql/17/main/server.key'" in conf
    assert "ssl_min_protocol_version = 'TLSv1.2'" in conf
    hba = postgres.pg_hba_conf(plan)  # type: ignore[arg-type]
    lines = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert lines[0] == ["local", "all", "postgres", "peer"]
    assert ["hostssl", '"webui3"', '"webui3"', "10.0.5.30/32", "scram-sha-256"] in lines
    assert lines[-3:] == [
        ["local", "all", "all", "reject"],
        ["host", "all", "all", "0.0.0.0/0", "reject"],
        ["host", "all", "all", "::/0", "reject"],
    ]


def test_redis_servers_per_instance_and_shared(
    seed: Rendered, render_text: Callable[[str], Rendered]
) -> None:
    d = doc(seed, "ai-shared")
    confs = {p: f for p, f in files(d).items() if p.startswith("/etc/redis/redis-")}
    assert sorted(confs) == [f"/etc/redis/redis-webui{n}.conf" for n in range(1, 6)]
    text = confs["/etc/redis/redis-webui2.conf"]["content"]
    # TLS only: the plain-text port is off.
    assert "\nport 0\ntls-port 6380\n" in text and "\ntls-auth-clients no\n" in text
    assert 'bind "10.0.5.24"' in text and "user default off" in text
    assert f'tls-cert-file "{SERVER_CERT}"' in text
    assert f'tls-key-file "{redis.TLS_KEY}"' in text
    key = files(d)[SERVER_KEY]
    assert (key["permissions"], key["owner"]) == ("0600", "root:root")
    assert key["content"] == seed.secrets.tls.hosts["ai-shared"].key  # type: ignore[attr-defined]
    # The setup script gives redis its own copy, before it starts the servers.
    script = files(d)[redis.SETUP_SCRIPT]["content"]
    copy = f"install -o redis -g redis -m 0600 {SERVER_KEY} {redis.TLS_KEY}"
    assert copy in script and script.index(copy) < script.index("systemctl enable")
    assert '"~*"' in text
    shared = doc(render_text(REPO_BLUEPRINT.replace("per-instance", "shared")), "ai-shared")
    (conf,) = [f["content"] for p, f in files(shared).items() if p.startswith("/etc/redis/redis-")]
    assert '"~webui1:*"' in conf and '"~webui5:*"' in conf and "-@dangerous" in conf


def test_ollama_unit_and_models(seed: Rendered) -> None:
    plan = seed.plan
    host = plan.shared  # type: ignore[attr-defined]
    unit = ollama.unit(plan, host)  # type: ignore[arg-type]
    # loopback only: the instances reach Ollama through its TLS terminator
    assert 'Environment="OLLAMA_HOST=127.0.0.1:11434"' in unit
    assert f'Environment="OLLAMA_MODELS={DATA_MOUNT}/ollama/models"' in unit
    assert 'Environment="OLLAMA_KEEP_ALIVE=5m"' in unit
    assert f"RequiresMountsFor={DATA_MOUNT}" in unit
    models = ollama.models_unit(host)
    assert "[Install]" not in models  # never part of a boot target
    d = doc(seed, "ai-shared")
    assert ["systemctl", "start", "--no-block", "owui-ollama-models.service"] in d["runcmd"]
    # background work, behind a first boot's setup, but never starved (not the idle classes)
    assert "\nNice=19\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n" in models
    script = files(d)[ollama.MODELS_SCRIPT]["content"]
    assert "for model in qwen2.5:3b nomic-embed-text; do" in script


def test_qdrant_config(seed: Rendered) -> None:
    config = qdrant.config(seed.plan, seed.secrets, seed.plan.shared)  # type: ignore[arg-type, attr-defined]
    assert config["service"]["host"] == "10.0.5.24"
    assert config["service"]["api_key"] == seed.secrets["qdrant.api_key"]  # type: ignore[index]
    assert config["telemetry_disabled"] is True
    assert config["storage"]["storage_path"].startswith(DATA_MOUNT + "/")


def test_every_service_unit_requires_the_data_volume(seed: Rendered) -> None:
    d = doc(seed, "ai-shared")
    for path, f in files(d).items():
        if path.startswith("/etc/systemd/system/") and "firewall" not in path:
            if "ollama-models" in path:
                continue  # it only talks to ollama.service, which requires the mount
            if path.endswith(".timer"):
                continue  # a timer only starts its service, which requires the mount
            if path == first_boot.UNIT:
                continue  # it only queues starts; its PostgreSQL step checks the mount itself
            if path in (ollama_tls.UNIT, ollama_tls.PACKAGED_UNIT, qdrant.COLLECTIONS_UNIT):
                continue  # no state of their own (they ask services that require it); masked
            if path == seed_trust.CONVERGE_UNIT:
                continue  # writes the root disk; the steps it runs check the mount themselves
            assert f"RequiresMountsFor={DATA_MOUNT}" in f["content"], path


def test_data_volume_is_never_reformatted(seed: Rendered) -> None:
    d = doc(seed, "ai-shared")
    assert d["fs_setup"] == [
        {
            "label": "owui-data",
            "filesystem": "ext4",
            "device": "/dev/vdb",
            "partition": "auto",
            "overwrite": False,
        }
    ]
    assert d["mounts"][0][:3] == ["LABEL=owui-data", DATA_MOUNT, "ext4"]
    assert "nofail" in d["mounts"][0][3]
    assert "disk_setup" not in d


def test_firewall_on_every_host(render_example: Callable[[str], Rendered]) -> None:
    rendered = render_example("multi-host.yml")
    for host in rendered.plan.hosts:  # type: ignore[attr-defined]
        text = files(doc(rendered, host.name))[firewall.RULESET]["content"]
        assert "flush ruleset" not in text
        assert "policy drop" in text
        assert 'ip saddr { 10.20.0.0/28 } tcp dport 22 accept comment "ssh"' in text
    shared = files(doc(rendered, "ai-shared"))[firewall.RULESET]["content"]
    assert (
        "ip saddr { 10.20.2.10/32, 10.20.2.11/32, 10.20.2.12/32 } tcp dport 5432 accept" in shared
    )


def test_accept_statement_for_public_and_private_ports() -> None:
    from ipaddress import IPv4Network

    rule = FirewallRule("openwebui-x", 3000, (IPv4Network("0.0.0.0/0"),))
    assert firewall.accept_statement(rule) == 'tcp dport 3000 accept comment "openwebui-x"'
    stmt = firewall.accept_statement(FirewallRule("o", 3000, (IPv4Network("10.0.0.0/8"),)))
    assert stmt == 'ip saddr { 10.0.0.0/8 } tcp dport 3000 accept comment "o"'
    # Public ports accept everyone: no counted drop for them.
    assert firewall.counted_drops([rule]) == []


def test_sections_only_on_the_shared_host(render_example: Callable[[str], Rendered]) -> None:
    rendered = render_example("multi-host.yml")
    plan, secrets = rendered.plan, rendered.secrets
    for host in plan.docker_hosts:  # type: ignore[attr-defined]
        for section in (postgres, redis, qdrant, ollama):
            assert section.part(plan, host, secrets) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("example", ["seed-example.yml", "multi-host.yml", "homelab.yml"])
def test_systemd_is_reloaded_at_most_once_per_boot(
    render_example: Callable[[str], Rendered], example: str
) -> None:
    """Every unit file is written before runcmd; one step, at the head of the configuration
    steps, reloads systemd if any unit the seed writes is stale, and nothing after it reloads
    again (a plain `systemctl enable` or `mask` does, costing seconds apiece on a first boot)."""
    rendered = render_example(example)
    for host in rendered.plan.hosts:  # type: ignore[attr-defined]
        d = doc(rendered, host.name)
        runcmd = d["runcmd"]
        parts = hostconfig.parts_for(rendered.plan, host, rendered.secrets)  # type: ignore[arg-type]
        check = list(hostconfig.reload_if_stale(hostconfig.written_units(parts)))
        reloads = [i for i, c in enumerate(runcmd) if "daemon-reload" in " ".join(c)]
        assert reloads == [runcmd.index(check)], host.name
        install = any(p.install for p in parts)
        # after `set -e`, the package check and the install step, before every configuration step
        assert reloads[0] == 2 + install, host.name
        scripts = [" ".join(c) for c in runcmd]
        scripts += [
            "\n".join(ln for ln in f["content"].splitlines() if not ln.lstrip().startswith("#"))
            for f in d["write_files"]
            if f["path"].endswith(".sh") or "/sbin/" in f["path"]
        ]
        for text in scripts:
            assert "daemon-reload" not in text or text == " ".join(check), text
            for call in re.finditer(r"systemctl ((?:en|dis)able|(?:un)?mask)\b[^;|&\n]*", text):
                # A packaged unit with a SysV script is enabled only where it is not yet:
                # `systemctl enable` runs update-rc.d for it, which reloads.
                guarded = re.search(r"is-enabled --quiet \S+ \|\| $", text[: call.start()])
                assert "--no-reload" in call[0] or guarded, (host.name, call[0])


@pytest.mark.parametrize("example", ["seed-example.yml", "multi-host.yml", "homelab.yml"])
def test_the_reload_check_asks_about_every_unit_the_seed_writes(
    render_example: Callable[[str], Rendered], example: str
) -> None:
    """The units the reload check names: one per unit file or drop-in under /etc/systemd/system,
    and for a template's drop-in, the instances the host starts (systemd cannot be asked about
    a template itself)."""
    rendered = render_example(example)
    for host in rendered.plan.hosts:  # type: ignore[attr-defined]
        d = doc(rendered, host.name)
        parts = hostconfig.parts_for(rendered.plan, host, rendered.secrets)  # type: ignore[arg-type]
        units = hostconfig.written_units(parts)
        assert len(units) == len(set(units))
        written = {
            f["path"].split("/")[4].removesuffix(".d")
            for f in d["write_files"]
            if f["path"].startswith("/etc/systemd/system/") and f["content"]
        }
        assert written, host.name
        for name in written:
            if "@." in name:
                prefix = name.split("@")[0] + "@"
                instances = [u for u in units if u.startswith(prefix)]
                assert instances and all(u.endswith(name.split("@")[1]) for u in instances)
            else:
                assert name in units, (host.name, name)
        assert set(units) <= written | {
            u for u in units if "@" in u and u.split("@")[0] + "@.service" in written
        }
    if example == "seed-example.yml":
        shared = hostconfig.written_units(
            hostconfig.parts_for(rendered.plan, rendered.plan.shared, rendered.secrets)  # type: ignore[attr-defined, arg-type]
        )
        version = rendered.plan.fleet.shared.postgres.version  # type: ignore[attr-defined]
        assert f"postgresql@{version}-main.service" in shared
        assert {f"redis-server@{s.name}.service" for s in rendered.plan.redis_servers} <= set(
            shared
        )  # type: ignore[attr-defined]


def test_a_template_dropin_without_instances_is_a_bug() -> None:
    part = hostconfig.Part(
        name="x", files=(hostconfig.File("/etc/systemd/system/foo@.service.d/a.conf", ""),)
    )
    with pytest.raises(ValueError, match=r"foo@\.service"):
        hostconfig.written_units([part])


@pytest.mark.parametrize("example", ["seed-example.yml", "multi-host.yml", "homelab.yml"])
def test_runcmd_stops_at_the_first_failed_step(
    render_example: Callable[[str], Rendered], example: str
) -> None:
    """cloud-init runs runcmd as one sh script and judges it by its exit status: `set -e`
    first, so a failed step (the firewall's check) stops the rest and fails cloud-init."""
    rendered = render_example(example)
    for host in rendered.plan.hosts:  # type: ignore[attr-defined]
        runcmd = doc(rendered, host.name)["runcmd"]
        assert runcmd[0] == "set -e", host.name
        assert all(isinstance(c, list) for c in runcmd[1:]), host.name


def test_shared_services_start_beside_the_postgres_setup_and_are_awaited(
    render_example: Callable[[str], Rendered],
) -> None:
    """Redis, Qdrant, Ollama and the backup timer are queued before the PostgreSQL setup (the
    slowest step) runs, after the firewall is up, and the last step waits for all of them."""
    rendered = render_example("seed-example.yml")
    runcmd = doc(rendered, "ai-shared")["runcmd"]
    text = [" ".join(c) for c in runcmd]
    firewall_up = text.index(f"systemctl enable --no-reload --now {firewall.UNIT_NAME}")
    setup = text.index(f"/bin/sh {postgres.SETUP_SCRIPT}")
    queued = [i for i, t in enumerate(text) if "--no-block" in t and "enable" in t]
    assert queued and all(firewall_up < i < setup for i in queued)
    redis_script = next(
        f["content"] for f in doc(rendered, "ai-shared")["write_files"]
        if f["path"] == redis.SETUP_SCRIPT
    )  # fmt: skip
    assert "systemctl enable --no-reload --now --no-block redis-server@" in redis_script
    servers = [f"redis-server@{s.name}.service" for s in rendered.plan.redis_servers]  # type: ignore[attr-defined]
    assert runcmd[-1] == [
        "systemctl", "start", *servers, "qdrant.service", qdrant.COLLECTIONS_UNIT_NAME,
        "ollama.service", ollama_tls.UNIT_NAME, "owui-backup.timer",
    ]  # fmt: skip
    assert setup == len(runcmd) - 2


# -- user-data size limits ---------------------------------------------------------------------


def test_small_user_data_is_kept_raw() -> None:
    assert hosts.fit_user_data(b"#cloud-config\n{}\n", "ec2", "h") == b"#cloud-config\n{}\n"


def test_large_user_data_is_gzipped_reproducibly() -> None:
    raw = b"#cloud-config\n" + b"# padding line that compresses well\n" * 1000
    packed = hosts.fit_user_data(raw, "ec2", "h")
    assert packed[:2] == b"\x1f\x8b" and gzip.decompress(packed) == raw
    assert packed == hosts.fit_user_data(raw, "ec2", "h")
    assert hosts.fit_user_data(raw, "nocloud", "h") == raw


def test_user_data_that_cannot_fit_is_refused() -> None:
    import os

    raw = b"#cloud-config\n" + os.urandom(20000).hex().encode()
    with pytest.raises(hosts.UserDataTooLarge, match="16384-byte limit of platform ec2"):
        hosts.fit_user_data(raw, "ec2", "h")


# -- quoting -----------------------------------------------------------------------------------

HOSTILE = ["it's", 'say "hi"', "$(reboot)", "`id`", "back\\slash", "100%", "ünïcødé ✓", "a;b"]


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_quoting_round_trips(value: str) -> None:
    import subprocess

    out = subprocess.run(
        ["sh", "-c", f"printf %s {quoting.shell(value)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == value


@pytest.mark.parametrize("value", HOSTILE)
def test_sql_and_conf_quoting(value: str) -> None:
    assert quoting.sql_literal(value) == "'" + value.replace("'", "''") + "'"
    assert quoting.sql_ident(value).startswith('"')
    assert "\n" not in quoting.pg_conf(value)


@pytest.mark.parametrize("value", ["line\nbreak", "nul\0", "cr\r"])
def test_line_based_languages_refuse_control_characters(value: str) -> None:
    for quote in (quoting.shell, quoting.pg_conf, quoting.systemd, quoting.hba):
        with pytest.raises(quoting.QuotingError):
            quote(value)
    assert "\n" not in quoting.redis(value)


def test_systemd_escapes_specifiers_and_variables() -> None:
    assert quoting.systemd('A=%h $HOME "q" \\') == '"A=%%h $$HOME \\"q\\" \\\\"'


def test_templates_refuse_unquoted_values() -> None:
    env = quoting.environment()
    with pytest.raises(quoting.QuotingError):
        env.from_string("{{ value }}").render(value="raw")
    assert env.from_string("{{ value|sh }} {{ n }}").render(value="a b", n=3) == "'a b' 3"


def test_hba_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(quoting.QuotingError):
        quoting.hba('a"b')
    assert quoting.hba("all") == '"all"'  # quoted, so never the keyword


REPO_BLUEPRINT = """
apiVersion: owuibuild/v1
name: unit
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.0.5.0/24]
network: {cidr: 10.0.5.0/24, gateway: 10.0.5.1, dns: [10.0.5.1]}
shared:
  host: {name: ai-shared, address: 10.0.5.24, data_volume: {label: owui-data, device: /dev/vdb}}
  redis: {mode: per-instance}
hosts:
  - {name: web-a, address: 10.0.5.30, data_volume: {label: owui-data}}
instances:
  - {name: webui1, host: web-a, port: 3001}
  - {name: webui2, host: web-a, port: 3002}
  - {name: webui3, host: web-a, port: 3003}
  - {name: webui4, host: web-a, port: 3004}
  - {name: webui5, host: web-a, port: 3005}
"""
