"""Section: backups on the shared host, and the restore runbook that goes with them.

When ``shared.backups.enabled``, owui-backup.timer starts owui-backup.service on the
blueprint's calendar. The service runs a script that dumps every instance database
(``pg_dump -Fc`` as postgres, peer authentication) and takes a full Qdrant snapshot through its
HTTP API, into ``plan.backup_dir``, keeping the newest ``keep`` of each. The Qdrant API key
reaches the script as a systemd credential read from a 0600 header file, never on a command
line. ``restore_runbook`` is the README's "Backups and restore" section: pure Markdown from the
plan, naming where secrets live but never holding one.
"""

from __future__ import annotations

import re

from ..plan import DATA_MOUNT, FLEET_CA, POSTGRES_PORT, SCRIPT_DIR, HostPlan, Plan
from ..quoting import Quoted, QuotingError, render_template, systemd_path, systemd_word
from ..secrets import Secrets
from . import File, Part
from . import qdrant as qdrant_section
from .datavolume import state_dir_command
from .exporters import BACKUP_METRICS, TEXTFILE_DIR
from .postgres import SOCKET_DIR

ORDER = 240

SERVICE_NAME = "owui-backup.service"
TIMER_NAME = "owui-backup.timer"
SERVICE = f"/etc/systemd/system/{SERVICE_NAME}"
TIMER = f"/etc/systemd/system/{TIMER_NAME}"
SCRIPT = f"{SCRIPT_DIR}/backup.sh"
# `api-key: <key>` for curl's --header @file; handed to the service with LoadCredential=.
KEY_FILE = "/etc/owuibuild/backup/qdrant-api-key.header"
CREDENTIAL = "qdrant-api-key.header"

_CALENDAR = re.compile(r"[A-Za-z0-9*:,./~-]+(?: [A-Za-z0-9*:,./~-]+)*")


def calendar(value: str) -> Quoted:
    """An OnCalendar= value. It is not quoted in a unit, so only the schema's characters pass."""
    if len(value) > 64 or not _CALENDAR.fullmatch(value):
        raise QuotingError(f"systemd: {value!r} is not an OnCalendar expression owuibuild writes")
    return Quoted(value)


def postgres_dir(plan: Plan) -> str:
    return f"{plan.backup_dir}/postgres"


def dump_dir(plan: Plan, database: str) -> str:
    """Where the dumps of one database go: ``<database>-<UTC timestamp>.dump``."""
    return f"{postgres_dir(plan)}/{database}"


def qdrant_dir(plan: Plan) -> str:
    """Where the Qdrant snapshots go: ``qdrant-<UTC timestamp>.snapshot``."""
    return f"{plan.backup_dir}/qdrant"


def pg_bin(plan: Plan) -> str:
    return f"/usr/lib/postgresql/{plan.fleet.shared.postgres.version}/bin"


def postgres_unit(plan: Plan) -> str:
    return f"postgresql@{plan.fleet.shared.postgres.version}-main.service"


def guarded_mount(plan: Plan, host: HostPlan) -> str:
    """The data volume the script refuses to run without: the backups live on it."""
    under = plan.backup_dir == DATA_MOUNT or plan.backup_dir.startswith(DATA_MOUNT + "/")
    return DATA_MOUNT if host.host.data_volume is not None and under else ""


def script(plan: Plan, host: HostPlan) -> str:
    return render_template(
        "backup.sh.j2",
        backup_dir=plan.backup_dir,
        keep=plan.fleet.shared.backups.keep,
        pg_bin=pg_bin(plan),
        qdrant_url=plan.qdrant_url,
        fleet_ca=FLEET_CA,
        credential=CREDENTIAL,
        databases=[i.db_name for i in plan.instances],
        mount=guarded_mount(plan, host),
        textfile=BACKUP_METRICS if plan.monitoring is not None else None,
    )


def service_unit(plan: Plan) -> str:
    return render_template(
        "backup.service.j2",
        postgres_unit=systemd_word(postgres_unit(plan)),
        mount=DATA_MOUNT,
        backup_dir=plan.backup_dir,
        socket_dir=SOCKET_DIR,
        port=POSTGRES_PORT,
        credential=systemd_word(CREDENTIAL),
        key_file=KEY_FILE,
        script=SCRIPT,
        # The backup directory, and with monitoring the node exporter's textfile directory.
        read_write=Quoted(
            " ".join(
                systemd_path(p)
                for p in (plan.backup_dir, *([TEXTFILE_DIR] if plan.monitoring else []))
            )
        ),
    )


def timer_unit(plan: Plan) -> str:
    return render_template(
        "backup.timer.j2", on_calendar=calendar(plan.fleet.shared.backups.on_calendar)
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    # pg_dump uses the local socket: backups run where PostgreSQL runs
    if "postgres" not in host.services or not plan.fleet.shared.backups.enabled:
        return None
    return Part(
        name="backup",
        packages=("curl",),
        files=(
            File(
                KEY_FILE, qdrant_section.key_header(plan, secrets), permissions="0600", defer=True
            ),
            File(SCRIPT, script(plan, host), permissions="0755", live=True),
            File(SERVICE, service_unit(plan)),
            File(TIMER, timer_unit(plan)),
        ),
        configure=(
            # ReadWritePaths= needs the directory to exist before the first run.
            state_dir_command(
                "root", "0700", plan.backup_dir, postgres_dir(plan), qdrant_dir(plan)
            ),
            # Enabled here, started by the seed's last step (Part.awaited): after the PostgreSQL
            # setup and Qdrant's start, so it never fires on a half-configured host.
            ("systemctl", "enable", "--no-reload", TIMER_NAME),
        ),
        awaited=(TIMER_NAME,),
    )


def restore_runbook(plan: Plan) -> str:
    """The "Backups and restore" section of the deployment README (Markdown). Pure."""
    b = plan.fleet.shared.backups
    backup_host = next(h for h in plan.hosts if "postgres" in h.services)
    shared = backup_host.name
    version = plan.fleet.shared.postgres.version
    if not b.enabled:
        return (
            "## Backups and restore\n\n"
            "Backups are off (`shared.backups.enabled: false`): nothing dumps the databases or\n"
            "snapshots Qdrant. Turn them on in the blueprint, render again and replace the\n"
            f"shared host `{shared}`.\n"
        )
    example = plan.instances[0] if plan.instances else None
    db = example.db_name if example else "<database>"
    role = example.db_role if example else "<role>"
    inst_unit = example.unit_name if example else "owui-<instance>.service"
    inst_host = example.host.name if example else "<instance host>"
    databases = ", ".join(f"`{i.db_name}`" for i in plan.instances) or "none yet"
    volume_note = (
        "on the data volume, so they survive a replacement of the host"
        if guarded_mount(plan, backup_host)
        else "NOT on the host's data volume: copy them off the host, or they are lost with it"
        if backup_host.host.data_volume is None
        else "in the directory the blueprint names; make sure a volume is mounted there"
    )
    q = qdrant_section
    return f"""## Backups and restore

On `{shared}`, `{TIMER_NAME}` (`OnCalendar={b.on_calendar}`, missed runs catch up at boot) starts
`{SERVICE_NAME}`, which writes into `{plan.backup_dir}`, {volume_note}:

- `{postgres_dir(plan)}/<database>/<database>-<UTC time>.dump`: `pg_dump -Fc` of each
  instance database ({databases}), the newest {b.keep} of each;
- `{qdrant_dir(plan)}/qdrant-<UTC time>.snapshot`: a full Qdrant snapshot, the newest {b.keep}.

Files are mode 0600, owned by root. Run the commands below as root on `{shared}` (`sudo -i`).
They hold no secret: passwords and keys live in `<blueprint>.secrets.yml` next to the blueprint,
and on the host only in 0600 files (the Qdrant API key in `{KEY_FILE}` and
`{q.CONFIG}`). Backups hold your users' data: copy them off the host too.

### See the backups

```sh
systemctl list-timers {TIMER_NAME}
journalctl -u {SERVICE_NAME} -n 50      # what the last runs did; failures say FAILED
ls -l {postgres_dir(plan)}/*/ {qdrant_dir(plan)}/
systemctl start {SERVICE_NAME}          # back up now
```

### Restore one instance's database

The example restores `{db}`; use the instance's own database and role (the README's instance
table lists them). The dump goes into a fresh database first, so the current one stays
untouched until the swap.

```sh
DUMP={dump_dir(plan, db)}/{db}-<UTC time>.dump
PG=/usr/lib/postgresql/{version}/bin
# 1. On {inst_host}: stop the instance.
systemctl stop {inst_unit}
# 2. On {shared}: restore into a fresh database owned by the instance's role.
runuser -u postgres -- "$PG/createdb" --owner={role} --encoding=UTF8 --locale=C.UTF-8 \\
    --template=template0 {db}_restore
# The backup directory is root's: the shell opens the dump, pg_restore reads it on stdin.
runuser -u postgres -- "$PG/pg_restore" --exit-on-error --single-transaction \\
    --dbname={db}_restore <"$DUMP"
# 3. Swap: keep the old database under another name, give the restored one the real name
#    and the same privileges.
runuser -u postgres -- "$PG/psql" -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';
ALTER DATABASE "{db}" RENAME TO "{db}_before_restore";
ALTER DATABASE "{db}_restore" RENAME TO "{db}";
REVOKE ALL ON DATABASE "{db}" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE "{db}" TO "{role}";
SQL
# 4. On {inst_host}: start the instance again and check it.
systemctl start {inst_unit}
# 5. Later, once you are happy:
#    runuser -u postgres -- "$PG/dropdb" {db}_before_restore
```

### Restore Qdrant from a snapshot

Qdrant restores a full snapshot only when it starts. This replaces the vectors of every
instance, so stop the instances that use it first.

```sh
SNAPSHOT={qdrant_dir(plan)}/qdrant-<UTC time>.snapshot
systemctl stop qdrant.service
mv {q.STORAGE} {q.STORAGE}.before-restore
install -d -o qdrant -g qdrant -m 0750 {q.STORAGE}
# The backup directory is root's; give Qdrant its own copy to read.
install -o qdrant -g qdrant -m 0600 "$SNAPSHOT" {q.SNAPSHOTS}/restore.snapshot
# Runs in the foreground: wait until it logs that it listens, then stop it with Ctrl-C.
runuser -u qdrant -- {q.BINARY} --config-path {q.CONFIG} \\
    --storage-snapshot {q.SNAPSHOTS}/restore.snapshot --force-snapshot
rm {q.SNAPSHOTS}/restore.snapshot
systemctl start qdrant.service
# Once the instances work again: rm -r {q.STORAGE}.before-restore
```
"""
