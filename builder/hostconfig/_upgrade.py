"""Upgrades of Open WebUI that cannot lose data: the guard in each instance's unit.

Open WebUI migrates its database when it starts, and no version runs on a database that a newer
one migrated. The Docker host section runs the guard script of this module around each
instance's start: before (ExecStartPre) it compares the blueprint's version with the one stamped
on the instance's data, dumps the database when they differ and refuses an older version; after
the ready check (ExecStartPost) it stamps the version. Where the dump connects from follows
pg_hba.conf: from the Docker host as the instance's role over verified TLS (its password in a
0600 pgpass file in the bundle directory), or, on the PostgreSQL host itself, where the role is
admitted only from the instance's container, as postgres over the local socket. The section
installs the PostgreSQL client of the server's major, since pg_dump must be at least as new.
Also the runbook's "Upgrading Open WebUI" section. Pure: every value comes from the plan.
"""

from __future__ import annotations

from ..plan import FLEET_CA, POSTGRES_PORT, SCRIPT_DIR, InstancePlan, Plan
from ..quoting import pgpass_field, render_template
from ..secrets import Secrets
from . import Command, File
from . import backup as backup_section
from .postgres import SOCKET_DIR, bin_dir
from .postgres import UPGRADE_SECTION as POSTGRES_UPGRADE_SECTION

GUARD_SCRIPT = f"{SCRIPT_DIR}/openwebui-upgrade-guard.sh"
# The runbook section the guard's refusal points to.
SECTION = "Upgrading Open WebUI"
# In an instance's data directory (on the data volume, so they move with it to a new host):
STAMP_FILE = ".owuibuild-openwebui-version"  # the version that last became healthy on it
PENDING_FILE = ".owuibuild-upgrade-pending"  # the dump of a start not yet healthy
DUMP_DIR = "upgrade-dumps"
KEEP = 3  # dumps kept per instance
# PostgreSQL may still be starting when an instance does (a first boot, a reboot of its host):
# the guard asks this many times, 5 seconds apart, before it gives up.
TRIES = 30
LOCAL = "local"  # the guard's SERVER argument where PostgreSQL runs on the same host
NO_PASSFILE = "none"


def colocated(plan: Plan, inst: InstancePlan) -> bool:
    """Whether the instance runs on the PostgreSQL host (pg_hba.conf then admits its role from
    its container's address only, never from the host's)."""
    return inst.host == plan.postgres_host


def passfile(inst: InstancePlan) -> str:
    return f"{inst.bundle_dir}/{inst.name}.pgpass"


def stamp_path(inst: InstancePlan) -> str:
    return f"{inst.data_dir}/{STAMP_FILE}"


def dump_dir(inst: InstancePlan) -> str:
    return f"{inst.data_dir}/{DUMP_DIR}"


def client_package(plan: Plan) -> str:
    """The PostgreSQL client of the server's major (pg_dump refuses an older server only)."""
    return f"postgresql-client-{plan.fleet.shared.postgres.version}"


def check_argv(plan: Plan, inst: InstancePlan) -> Command:
    local = colocated(plan, inst)
    return (
        "/bin/sh", GUARD_SCRIPT, "check", inst.name, plan.fleet.openwebui.version, inst.data_dir,
        inst.db_name, inst.db_role, LOCAL if local else str(plan.postgres_host.address),
        NO_PASSFILE if local else passfile(inst), inst.unit_name,
    )  # fmt: skip


def stamp_argv(plan: Plan, inst: InstancePlan) -> Command:
    version = plan.fleet.openwebui.version
    return ("/bin/sh", GUARD_SCRIPT, "stamp", inst.name, version, inst.data_dir)


def pgpass(plan: Plan, inst: InstancePlan, secrets: Secrets) -> str:
    fields = (
        str(plan.postgres_host.address),
        str(POSTGRES_PORT),
        inst.db_name,
        inst.db_role,
        secrets[inst.db_password.name],
    )
    return ":".join(pgpass_field(f) for f in fields) + "\n"


def guard_script(plan: Plan) -> str:
    return render_template(
        "openwebui-upgrade-guard.sh.j2",
        pg_bin=bin_dir(plan.fleet.shared.postgres.version),
        port=POSTGRES_PORT,
        fleet_ca=FLEET_CA,
        socket_dir=SOCKET_DIR,
        keep=KEEP,
        tries=TRIES,
        local=LOCAL,
        stamp_file=STAMP_FILE,
        pending_file=PENDING_FILE,
        dump_dir=DUMP_DIR,
        runbook_section=SECTION,
    )


def files(plan: Plan, instances: tuple[InstancePlan, ...], secrets: Secrets) -> tuple[File, ...]:
    """The guard script and the pgpass file of each instance that dumps over the network."""
    if not instances:
        return ()
    return (
        File(GUARD_SCRIPT, guard_script(plan), "0755"),
        *(
            File(passfile(i), pgpass(plan, i, secrets), "0600", live=True)
            for i in instances
            if not colocated(plan, i)
        ),
    )


def _backup_first(plan: Plan) -> str:
    shared = plan.postgres_host.name
    if not plan.fleet.shared.backups.enabled:
        return (
            f"Backups are off (`shared.backups.enabled: false`): dump every instance database "
            f'on `{shared}` by hand first (as in step 1 of "{POSTGRES_UPGRADE_SECTION}").'
        )
    b = backup_section
    return f"""As root on `{shared}`:

```sh
systemctl start {b.SERVICE_NAME}                      # returns when the run is done
journalctl -u {b.SERVICE_NAME} -n 50 --no-pager       # every database and Qdrant; no FAILED
for dump in {b.postgres_dir(plan)}/*/; do
    latest=$(ls "$dump" | tail -n 1)
    {bin_dir(plan.fleet.shared.postgres.version)}/pg_restore --list "$dump$latest" >/dev/null \\
        && echo "readable: $dump$latest"
done
```

Copy the new files off the host too."""


def runbook(plan: Plan) -> str:
    """The README's "Upgrading Open WebUI" section. Pure."""
    example = plan.instances[0]
    return f"""## {SECTION}

Open WebUI migrates its database when it starts, and no version runs on a database that a
newer one migrated. So each instance's unit guards its data (`{GUARD_SCRIPT}`):

- `<data dir>/{STAMP_FILE}` names the Open WebUI version that last ran on the instance's data.
  It is written only once the version answers `/health`, so a start that failed never claims it.
- Before an instance starts another version than the stamped one (or, with no stamp, on a
  database that has tables), the unit dumps its database (`pg_dump -Fc`) to
  `<data dir>/{DUMP_DIR}/<instance>-<UTC time>-openwebui-<old version>.dump` (mode 0600, on
  the data volume; the newest {KEEP} are kept), and starts only once the dump is complete. A
  start that does not become healthy keeps that dump: later tries do not dump again.
- It refuses to start a version older than the stamped one. `journalctl -u <unit>` then names
  the version that migrated the data, the newest dump of the older version, and the commands
  that restore it.

For `{example.name}`, the data directory is `{example.data_dir}` on `{example.host.name}`.

### Upgrade the instances

1. Take a backup and check it (below).
2. Set `openwebui.version` (and `digest`, `archive_sha256` if you pin them) in the blueprint,
   and render.
3. Replace each Docker host with a VM booted from its new seed, with the same data volume.
   Each instance dumps its database, then starts the new version:
   `journalctl -u <unit>` shows the dump; check the fleet with `owuibuild status <blueprint>`.

To go back, set the old version again and render: the unit refuses to start it on the
migrated data, and its message says how to restore the dump taken before the upgrade (what
was written since is lost).

### Upgrade the shared services

Shared services change only with their host (a new release, PostgreSQL or Redis major, or a
new Qdrant or Ollama version): stop the instances, replace the host, start them again. For a
PostgreSQL major, follow "{POSTGRES_UPGRADE_SECTION}" below. Either way, take a backup and
check it first.

### Take and check a backup

{_backup_first(plan)}
"""
