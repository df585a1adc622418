"""Target: the deployment runbook, README.md, with a Mermaid topology diagram.

Everything in it comes from the plan (and, for where secrets live, from the host sections'
file lists). It never holds a secret: it says where each secret lives, not what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv4Network

from ..alerts import rules
from ..hostconfig import exporters, parts_for, prometheus
from ..hostconfig._upgrade import runbook as openwebui_upgrade_runbook
from ..hostconfig.backup import restore_runbook
from ..hostconfig.postgres import INIT_SQL, upgrade_runbook
from ..pki import key_fingerprint
from ..plan import MONITOR_REDIS_USER, MONITOR_ROLE, SWAPPABLE_SEED_PLATFORMS, Plan
from ..secrets import Secrets
from . import Artifact
from .ca import CA_FILE

SERVICE_NAMES = {"postgres": "PostgreSQL", "redis": "Redis", "qdrant": "Qdrant", "ollama": "Ollama"}


def _node(name: str) -> str:
    return "h_" + name.replace("-", "_")


def _source_names(plan: Plan) -> Callable[[tuple[IPv4Network, ...]], list[str]]:
    """Names for a rule's sources: fleet hosts by name, other networks as themselves."""
    by_address = {IPv4Network(f"{h.host.address}/32"): h.name for h in plan.hosts}

    def names(nets: tuple[IPv4Network, ...]) -> list[str]:
        return [by_address.get(n, str(n)) for n in nets]

    return names


def mermaid(plan: Plan) -> str:
    """Hosts with their services and instances, and an edge for every firewall opening."""
    lines = ["flowchart LR"]
    for host in plan.hosts:
        lines.append(f'  subgraph {_node(host.name)}["{host.name} ({host.host.address})"]')
        for service in sorted(host.services):
            lines.append(f'    {_node(host.name)}_{service}["{SERVICE_NAMES[service]}"]')
        for inst in host.instances:
            lines.append(f'    i_{inst.db_name}["Open WebUI {inst.name} :{inst.port}"]')
        lines.append("  end")
    outside: dict[str, str] = {}
    sources = _source_names(plan)
    fleet_hosts = {h.name for h in plan.hosts}
    for host in plan.hosts:
        for rule in host.firewall:
            for source in sources(rule.sources):
                if source in fleet_hosts:
                    src = _node(source)
                else:
                    src = outside.setdefault(source, f"n{len(outside)}")
                lines.append(f"  {src} -->|{rule.service} {rule.port}| {_node(host.name)}")
    for label, node in outside.items():
        lines.append(f'  {node}(["{label}"])')
    return "\n".join(lines)


def _hosts_table(plan: Plan) -> str:
    rows = [
        "| host | address | runs | instances | data volume |",
        "| --- | --- | --- | --- | --- |",
    ]
    for h in plan.hosts:
        runs = ", ".join(
            [SERVICE_NAMES[s] for s in sorted(h.services)] + (["Docker"] if h.runs_docker else [])
        )
        names = ", ".join(i.name for i in h.instances) or "-"
        volume = h.host.data_volume
        vol = "none"
        if volume is not None:
            vol = f"label `{volume.label}`" + (f" on `{volume.device}`" if volume.device else "")
            vol += f", {volume.size_gb} GB" if volume.size_gb else ""
        rows.append(f"| {h.name} | {h.host.address} | {runs or '-'} | {names} | {vol} |")
    return "\n".join(rows)


def _firewall_table(plan: Plan) -> str:
    rows = ["| host | port | service | allowed from |", "| --- | --- | --- | --- |"]
    sources = _source_names(plan)
    for h in plan.hosts:
        for r in h.firewall:
            rows.append(
                f"| {h.name} | {r.port}/{r.proto} | {r.service} | {', '.join(sources(r.sources))} |"
            )
    return "\n".join(rows)


def _instances_table(plan: Plan) -> str:
    rows = [
        "| instance | host | listens on | url | database | redis | qdrant prefix |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i in plan.instances:
        rows.append(
            f"| {i.name} | {i.host.name} | {i.bind_address}:{i.port} | {i.url or '-'} "
            f"| {i.db_name} @ {plan.postgres_host.name} | {i.redis_address}:{i.redis_port} "
            f"| {i.qdrant_collection_prefix} |"
        )
    return "\n".join(rows)


def _accounts_table(plan: Plan) -> str:
    rows = [
        "| instance | admin e-mail | admin password (in the secrets file) | sign-up |",
        "| --- | --- | --- | --- |",
    ]
    for i in plan.instances:
        signup = i.instance.signup
        opened = f"open, new accounts {signup.default_role}" if signup.enabled else "closed"
        rows.append(
            f"| {i.name} | {i.instance.admin.email} | `{i.admin_password.name}` | {opened} |"
        )
    return "\n".join(rows)


def _certificates_table(plan: Plan, secrets: Secrets) -> str:
    rows = ["| host | names | valid until |", "| --- | --- | --- |"]
    for host in sorted(plan.certificate_hosts):
        issued = secrets.tls.hosts[host]
        rows.append(f"| {host} | {', '.join(issued.names)} | {issued.not_after.isoformat()} |")
    for host in sorted(plan.front_door_certificates):
        issued = secrets.tls.front_doors[host]
        rows.append(
            f"| {host} (front door) | {', '.join(issued.names)} | {issued.not_after.isoformat()} |"
        )
    return "\n".join(rows)


def _front_door(plan: Plan) -> str:
    door = plan.front_door
    if door is None:
        return (
            "## Reaching the instances\n\n"
            "There is no front door (blueprint: `front_door`): each instance answers plain HTTP "
            "on its port, as the instances table says. Browsers need HTTPS for sign-in forms, "
            "the microphone and the clipboard; add a front door to serve them over HTTPS.\n"
        )
    rows = ["| url | DNS name | points at | instance |", "| --- | --- | --- | --- |"]
    for i in plan.instances:
        rows.append(f"| {i.url} | {i.server_name} | {i.host.address} | {i.name} |")
    who = "everyone" if door.allow_from is None else ", ".join(str(n) for n in door.allow_from)
    if door.tls == "internal":
        certificates = (
            f"Certificates come from the fleet CA: every browser that opens an instance must "
            f"trust `{CA_FILE}` (install it in the devices' trust stores, see below)."
        )
    else:
        acme = door.acme
        assert acme is not None
        directory = acme.directory or "Let's Encrypt"
        certificates = (
            f"Certificates come from the ACME CA at {directory} "
            f"(account {acme.email}); the CA must reach each Docker host on port 80 or 443 "
            "and resolve each DNS name to it. Caddy keeps the account and the certificates on "
            "the data volume, so a replaced host does not ask again."
        )
    return f"""## The front door

Caddy on each Docker host serves its instances over HTTPS, each by its own DNS name; plain
HTTP is redirected, and the instances' own ports answer on loopback only. Ports 80 and 443
admit {who}. Create these DNS records (or hosts-file entries):

{chr(10).join(rows)}

{certificates}

Uploads over {door.max_upload_mb} MiB get 413. Open WebUI's `WEBUI_URL`, `CORS_ALLOW_ORIGIN`
and Secure cookies follow each url, and it believes `X-Forwarded-*` from the front door only.
Caddy runs as `owui-front-door.service` (`journalctl -u owui-front-door`).
"""


def _monitoring(plan: Plan) -> str:
    watch = plan.monitoring
    if watch is None:
        return (
            "## Monitoring\n\n"
            "None (blueprint: `monitoring`): `owuibuild status` shows the fleet's state now; "
            "nothing keeps history or raises an alert.\n"
        )
    settings = watch.settings
    if settings.webhook is not None:
        delivery = f"Alertmanager posts firing alerts to {settings.webhook}."
    elif settings.email is not None:
        delivery = (
            f"Alertmanager mails firing alerts to {settings.email.to} through "
            f"{settings.email.smarthost}."
        )
    else:
        delivery = (
            "No receiver is set: firing alerts are shown by Prometheus (`/alerts`) and by "
            "`owuibuild status`, and delivered nowhere."
        )
    alerts = ", ".join(f"`{r['alert']}`" for r in rules(plan))
    daemons = [prometheus.PROMETHEUS, prometheus.BLACKBOX, exporters.NODE, exporters.POSTGRES]
    daemons += [exporters.REDIS, *([prometheus.ALERTMANAGER] if watch.alertmanager else [])]
    units = ", ".join(f"`{d.unit_name.removesuffix('.service')}`" for d in daemons)
    return f"""## Monitoring

Prometheus runs on `{watch.host.name}` at {watch.prometheus_url} (HTTPS with the fleet CA;
the firewall admits the admins' networks), keeping {settings.retention} of samples on the data
volume. It scrapes the node exporter of every host, the PostgreSQL exporter (role
`{MONITOR_ROLE}`, `pg_monitor` only), every Redis server through the Redis exporter (ACL user
`{MONITOR_REDIS_USER}`), Qdrant's metrics, and probes each instance's `/health`, Ollama and
each host's certificate. Alerts: {alerts}. {delivery}

To look: `curl --cacert {CA_FILE} {watch.prometheus_url}/api/v1/alerts`, or open
{watch.prometheus_url} in a browser that trusts the fleet CA. The units are
{units} (`journalctl -u <unit>`).
"""


def _secret_locations(plan: Plan, secrets: Secrets) -> str:
    rows = ["| host | file | owner |", "| --- | --- | --- |"]
    keys = [key_fingerprint(k) for k in secrets.tls.private_keys()]
    for h in plan.hosts:
        for part in parts_for(plan, h, secrets):
            for f in part.files:
                if secrets.occur_in(f.content) or any(k in f.content for k in keys):
                    rows.append(f"| {h.name} | `{f.path}` | {f.owner} |")
    return "\n".join(rows)


def runbook(plan: Plan, secrets: Secrets) -> str:
    fleet = plan.fleet
    first = plan.instances[0]
    ollama = ", ".join(plan.ollama_urls)
    model_access = (
        "everything, model management included (shared.ollama.allow_model_management)"
        if fleet.shared.ollama.allow_model_management
        else "inference and the model list only (pulling or deleting a model gets 403)"
    )
    return f"""# Fleet `{fleet.name}`

Generated by owuibuild from the blueprint; do not edit. To change anything, edit the blueprint,
render again, and replace the affected hosts: hosts are never changed in place.

## Topology

```mermaid
{mermaid(plan)}
```

An arrow is a firewall opening: who may reach which port. Every other inbound connection is
dropped. Ollama ({ollama}) has no authentication of its own: it listens on loopback, and its
TLS terminator admits the instances to {model_access}.

## Hosts

{_hosts_table(plan)}

## Instances

{_instances_table(plan)}

{_front_door(plan)}
{_monitoring(plan)}
## Sign in

Every instance creates its admin account at its first start, before it answers anyone, so
nobody can make themselves its admin by signing up first. Sign in with the e-mail below and
the password under the named key of the secrets file (never printed; read it from the file).
The password is used only while the instance's database has no user: to change it later, do
it in Open WebUI (changing the secrets file does not change an existing admin).

{_accounts_table(plan)}

## Firewall

{_firewall_table(plan)}

## TLS and the fleet CA

The instances reach PostgreSQL, Redis, Qdrant and Ollama over TLS only (plain-text
connections are refused), and verify each service's certificate against the fleet CA and the
service host's address: PostgreSQL and Redis with the CA alone, Qdrant and Ollama with the
Docker host's `/etc/owuibuild/tls/ca-bundle.crt` (its system CA certificates plus the fleet
CA, made before each instance starts).
The CA was made on the first render and is kept, with its key and every host's key, in
`<blueprint>.tls.secrets.yml` next to the blueprint (mode 0600): back it up with the secrets
file. Its public certificate is `{CA_FILE}` in this directory. To trust it on a Debian or
Ubuntu machine: `cp {CA_FILE} /usr/local/share/ca-certificates/owuibuild-{fleet.name}.crt &&
update-ca-certificates`; for one client only, `psql "sslmode=verify-full sslrootcert={CA_FILE}
host=..."` or `redis-cli --tls --cacert {CA_FILE} ...` or `curl --cacert {CA_FILE} https://...`.

{_certificates_table(plan, secrets)}

A render within 30 days of a certificate's end issues it again and says so: replace that host
to put the new one in service.

## Bring the fleet up

Each host has a NoCloud seed in `hosts/<host>/`: `seed.iso` (a volume labelled `cidata` holding
`user-data`, `meta-data` and `network-config`). Make a VM from a stock {fleet.os.distro} cloud
image (or the golden image, below), attach its data volume (a disk that will carry the
filesystem label shown above) and its `seed.iso`, and boot. cloud-init configures everything
at first boot; nobody logs in. Boot the hosts that run shared services first.

- **Proxmox VE**: upload `seed.iso` to an ISO storage, then
  `qm set <vmid> --ide2 <storage>:iso/<host>-seed.iso,media=cdrom` (and `--scsi1 <storage>:<size>` for
  the data volume); or use the image's own cloud-init drive and paste `user-data` as a custom
  `cicustom` snippet (`qm set <vmid> --cicustom "user=<storage>:snippets/<host>-user-data"`).
- **libvirt/KVM**: `virt-install --import --disk <image>.qcow2 --disk size=<GB> --disk
  hosts/<host>/seed.iso,device=cdrom --os-variant {fleet.os.distro.replace("-", "")} ...`, or
  `--cloud-init user-data=hosts/<host>/user-data,meta-data=hosts/<host>/meta-data,network-config=hosts/<host>/network-config`.
- **A cloud** (EC2, OpenStack, GCE, Azure): pass `hosts/<host>/user-data` as the instance's
  user-data (owuibuild gzips it when the blueprint's `platform` limits its size) and give the
  VM the address from the table. The cloud's metadata service exposes user-data to processes
  on the VM: restrict access to it (e.g. IMDSv2 with a hop limit of 1 on EC2).

Check the fleet afterwards with `owuibuild status <blueprint>` from a machine the firewall
admits (see the table above).

## Golden images

`packer/` holds templates that bake the same software the seeds would install (never a secret
or site setting): `owuibuild bake <blueprint> --image shared` and `--image instance-host`.
Boot a golden image with the same `seed.iso`: it only configures, so the host is ready much
sooner. Builders: {", ".join(fleet.images.builders)}.

## Add an instance

1. Add one line under `instances:` in the blueprint (a new name, a host, a free port).
2. `owuibuild render <blueprint>`: new secrets are added to the secrets file; existing ones
   are kept.
3. Render says, per host, `live` or `needs a host replacement`. {_add_instance_step(fleet.platform)}
   For a new Docker host, just boot it from its seed.

## Where the secrets live

The source of truth is `<blueprint>.secrets.yml` next to the blueprint (mode 0600): keep it
private and backed up. On the hosts, secrets are only in these files (mode 0600), written
from `user-data` (stored by cloud-init with mode 0600):

{_secret_locations(plan, secrets)}

Each instance's env file (`{first.bundle_dir}/` on its host and `instances/<name>/` here) holds
its database and Redis passwords, its own Qdrant token (signed with the Qdrant API key, good
for its own collections only), its `WEBUI_SECRET_KEY` and its admin's first password; its
`<name>.pgpass` beside it holds the database password again, for the dump before an upgrade
(not on the PostgreSQL host, where that dump needs no password). The
Qdrant API key itself is only on the Qdrant hosts (and, for the backups, the PostgreSQL host). PostgreSQL gets the role passwords only as SCRAM-SHA-256 verifiers, in
`{INIT_SQL}` (0600, postgres) on `{plan.postgres_host.name}`; no superuser password exists (the
postgres user logs in by peer authentication only). Redis gets each instance's password only
as its SHA-256, in its `/etc/redis/redis-<name>.conf` (0600, redis).

{restore_runbook(plan)}
{openwebui_upgrade_runbook(plan)}
{upgrade_runbook(plan)}"""


def render(plan: Plan, secrets: Secrets) -> Iterable[Artifact]:
    yield Artifact("README.md", runbook(plan, secrets).encode())


def _add_instance_step(platform: str) -> str:
    """How a host takes a new seed on ``platform``: a swapped medium, or a new host."""
    live = (
        "Put each `live` host's new `hosts/<host>/seed.iso` in its VM's CD-ROM drive, "
        "shared-services hosts first: the host verifies the seed's signature and applies it "
        'without a reboot (see the README\'s "Re-applying a seed to a running host"; '
        "`journalctl -u 'owuibuild-seed-converge@*'` says what it did or why it refused). "
    )
    replace = (
        "Replace each host that changed with a VM booted from its new seed (the data volumes "
        "carry the existing data over). The other instances ride out a replaced shared host "
        "by themselves: they answer again as soon as its services do."
    )
    if platform in SWAPPABLE_SEED_PLATFORMS:
        return live + "A host that needs a replacement: " + replace[0].lower() + replace[1:]
    return replace
