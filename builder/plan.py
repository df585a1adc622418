"""The plan: every value derived from the fleet model, computed once.

Targets never look at the blueprint and never compute a port, a path, a name or a pool size
themselves: they ask the plan. This module is pure (no I/O, no clock, no randomness).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from . import artifacts, qdrant_access

# The shared ranges' arithmetic lives in owuibuild.allocation; validation reads it from here.
from .allocation import MAX_CONNECTIONS_PER_INSTANCE as MAX_CONNECTIONS_PER_INSTANCE
from .allocation import RESERVED_CONNECTIONS as RESERVED_CONNECTIONS
from .allocation import SUBNET_PREFIX as SUBNET_PREFIX
from .allocation import Allocation, allocate, split_share
from .allocation import connections_used as connections_used
from .allocation import database_pools as database_pools
from .artifacts import Artifact
from .model import Fleet, FrontDoor, Host, Instance, Monitoring

OLLAMA_PORT = 11434  # the TLS terminator's, on the private address
QDRANT_PORT = 6333
QDRANT_P2P_PORT = 6335  # Qdrant's cluster (Raft/peer) port
POSTGRES_PORT = 5432
SSH_PORT = 22
OPENWEBUI_CONTAINER_PORT = 8080
HTTP_PORT = 80  # the front door's: redirects to HTTPS, and ACME's HTTP challenge
HTTPS_PORT = 443  # the front door's
# Where an instance publishes its port when a front door serves it: only Caddy, on the same
# host, reaches it there.
LOOPBACK = "127.0.0.1"
# Ollama itself listens on loopback only, on its terminator's port: it has no TLS and no
# authentication, so only its terminator (and the host's own model pulls) reach it.
OLLAMA_LOOPBACK = LOOPBACK
# Monitoring (blueprint: monitoring). Prometheus serves HTTPS on the monitoring host's private
# address; Alertmanager and the blackbox exporter listen on its loopback only; the other
# exporters serve HTTPS on their host's private address, to the monitoring host alone.
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
NODE_EXPORTER_PORT = 9100
BLACKBOX_PORT = 9115
REDIS_EXPORTER_PORT = 9121
POSTGRES_EXPORTER_PORT = 9187
# The exporters' logins: a PostgreSQL role with pg_monitor only, and an ACL user on every Redis
# server that may ask INFO and little else. Instance names cannot take these (validation).
MONITOR_ROLE = "owuibuild_monitor"
MONITOR_REDIS_USER = "owuibuild-monitor"

# Resident memory estimates (MiB) used only for the overcommit warning. Open WebUI 0.12.4 was
# measured at about 875 MB RSS per instance.
MEMORY_MB_OPENWEBUI = 1024
MEMORY_MB_OS = 512
MEMORY_MB_POSTGRES = 512
MEMORY_MB_QDRANT = 512
MEMORY_MB_OLLAMA_IDLE = 512

# Where each host mounts its data volume; everything that must survive a host replacement
# lives below it.
DATA_MOUNT = "/var/lib/owuibuild"
BUNDLE_ROOT = "/opt/owuibuild"
CONTAINER_DATA_DIR = "/app/backend/data"
# State of the shared services, on the data volume (see DATA_MOUNT).
POSTGRES_DATA_ROOT = f"{DATA_MOUNT}/postgresql"  # clusters live at <root>/<version>/main
REDIS_DATA_ROOT = f"{DATA_MOUNT}/redis"  # one directory per redis-server
QDRANT_DATA = f"{DATA_MOUNT}/qdrant"  # storage/ and snapshots/ below it
OLLAMA_DATA = f"{DATA_MOUNT}/ollama"  # the ollama user's home; models/ below it
# Where generated scripts and install stamps live on every host.
SCRIPT_DIR = "/usr/local/lib/owuibuild"
BACKUP_DIR = f"{DATA_MOUNT}/backups"  # default; shared.backups.directory overrides it
# The fleet CA's certificate on every host, at the same path inside each instance's container
# (mounted read-only there): every client of a shared service verifies the service with it.
FLEET_CA = "/etc/owuibuild/tls/fleet-ca.crt"
# A service host's certificate from the fleet CA (its name and private address) and its key,
# as generated; each service installs its own copy of the key, readable by it alone.
SERVER_CERT = "/etc/owuibuild/tls/server.crt"
SERVER_KEY = "/etc/owuibuild/tls/server.key"
TLS_MIN_VERSION = "TLSv1.2"
# On a host that runs instances: the system's CA bundle plus the fleet CA, made at boot and
# mounted read-only into each container, whose HTTPS clients (Qdrant's, Ollama's, and the
# ones that reach public services) trust it instead of their own bundles.
CA_BUNDLE = "/etc/owuibuild/tls/ca-bundle.crt"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


# -- pure helpers shared by validation and planning -------------------------------------------------


def identifier(name: str) -> str:
    """A DNS label as a PostgreSQL/Qdrant-friendly identifier ('-' is not valid unquoted)."""
    return name.replace("-", "_")


# -- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """A secret the plan needs, by its dotted name in the secrets file."""

    name: str


SEED_SIGNING_KEY = SecretRef("fleet.seed_signing_key")
# Platforms whose seed is a NoCloud cidata medium that can be swapped under a running VM (a
# CD-ROM): only there can a host take a new seed live. Clouds' user-data cannot change on a
# running instance, so there every new seed means a new host.
SWAPPABLE_SEED_PLATFORMS = frozenset({"nocloud", "proxmox", "libvirt"})


@dataclass(frozen=True)
class InstancePlan:
    instance: Instance
    host: Host
    port: int
    bind_address: str  # where the port is published on the host
    url: str | None
    server_name: str | None  # the url's host name, in lower case: the front door's site
    db_name: str
    db_role: str
    db_pool_size: int
    db_max_overflow: int
    redis_address: IPv4Address
    redis_port: int
    redis_user: str
    redis_key_prefix: str
    qdrant_collection_prefix: str
    bundle_dir: str  # /opt/owuibuild/<name> on the host
    data_dir: str  # host path of the instance's DATA_DIR, on the data volume
    unit_name: str
    db_password: SecretRef
    redis_password: SecretRef
    webui_secret_key: SecretRef
    admin_password: SecretRef  # of the admin account Open WebUI creates at first start
    docker_subnet: IPv4Network  # the instance's own Docker network
    container_address: IPv4Address  # its container's fixed address on that network

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def origin(self) -> str | None:
        """The url's scheme, host and port: the one origin browsers load the instance from."""
        if self.url is None:
            return None
        scheme, rest = self.url.split("://", 1)
        authority = rest.split("/", 1)[0].lower()
        default = {"https": ":443", "http": ":80"}[scheme.lower()]
        return f"{scheme.lower()}://{authority.removesuffix(default)}"

    @property
    def proxy_address(self) -> IPv4Address:
        """Where the front door's requests come from, as the container sees them: docker-proxy
        connects from the host's address on the instance's network, its gateway."""
        return self.docker_subnet.network_address + 1

    @property
    def qdrant_collections(self) -> tuple[str, ...]:
        """The instance's own Qdrant collections, the only ones its token may use."""
        return qdrant_access.collections(self.qdrant_collection_prefix)

    def source_network(self, service_host: Host) -> IPv4Network:
        """Where this instance's connections to ``service_host`` come from: its container's
        fixed address when the service runs on the same host (no NAT; not the whole subnet,
        whose gateway address any local process could bind), else its host's address."""
        if service_host == self.host:
            return IPv4Network((self.container_address, 32))
        return IPv4Network((self.host.address, 32))


@dataclass(frozen=True)
class FirewallRule:
    """Accept ``proto``/``port`` from ``sources`` (networks) on one host."""

    service: str
    port: int
    sources: tuple[IPv4Network, ...]
    proto: str = "tcp"


@dataclass(frozen=True)
class RedisServerPlan:
    """One redis-server process on the shared host and the instances it serves."""

    name: str  # systemd template instance name, e.g. redis-server@<name>
    port: int
    instances: tuple[InstancePlan, ...]


SERVICES = ("postgres", "redis", "qdrant", "ollama")


@dataclass(frozen=True)
class HostPlan:
    host: Host
    role: str  # "shared" (the blueprint's shared host) or "docker" (a host from `hosts:`)
    instances: tuple[InstancePlan, ...]
    firewall: tuple[FirewallRule, ...]
    instance_id: str  # stable cloud-init instance-id
    services: frozenset[str] = frozenset()  # shared services placed on this host (SERVICES)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def runs_docker(self) -> bool:
        return bool(self.instances)


@dataclass(frozen=True)
class MonitoringPlan:
    """Where Prometheus runs and the exporters' own credentials."""

    settings: Monitoring
    host: Host
    postgres_password: SecretRef  # MONITOR_ROLE's
    redis_password: SecretRef  # MONITOR_REDIS_USER's, the same on every Redis server

    @property
    def source(self) -> IPv4Network:
        """Where scrapes and probes come from: the monitoring host's address."""
        return IPv4Network((self.host.address, 32))

    @property
    def prometheus_url(self) -> str:
        return f"https://{self.host.address}:{PROMETHEUS_PORT}"

    @property
    def alertmanager(self) -> bool:
        """Alertmanager runs when the blueprint names a receiver."""
        return self.settings.webhook is not None or self.settings.email is not None


@dataclass(frozen=True)
class QdrantCluster:
    """Qdrant's distributed mode across three or more hosts."""

    nodes: tuple[Host, ...]
    p2p_port: int
    replication_factor: int
    bootstrap: Host  # the first node; the others join it

    def peer_url(self, host: Host) -> str:
        return f"https://{host.address}:{self.p2p_port}"


@dataclass(frozen=True)
class Plan:
    fleet: Fleet
    instances: tuple[InstancePlan, ...]
    shared: HostPlan
    docker_hosts: tuple[HostPlan, ...]  # hosts from `hosts:`; the shared host is not repeated
    redis_servers: tuple[RedisServerPlan, ...]
    ollama_url: str
    qdrant_url: str
    openwebui_image: str  # full reference: repo:tag[@digest]
    openwebui_archive: Artifact | None  # the image as a `docker save` archive on the mirror
    ollama_models: tuple[str, ...]  # models to pull, embedding model included
    qdrant_api_key: SecretRef
    backup_dir: str  # where the backup timer writes dumps and snapshots
    postgres_host: Host
    redis_host: Host
    qdrant_hosts: tuple[Host, ...]
    ollama_hosts: tuple[Host, ...]
    ollama_urls: tuple[str, ...]  # every Ollama node; instances balance across them
    qdrant_cluster: QdrantCluster | None
    # The embedding model's vector length, which each instance's collections are made with.
    embedding_dimensions: int
    front_door: FrontDoor | None = None
    monitoring: MonitoringPlan | None = None
    # The fleet's Ed25519 seed-signing key (owuibuild.seed_signing): every host trusts the seeds
    # it signs, from its first boot on.
    seed_signing_key: SecretRef = SEED_SIGNING_KEY

    @property
    def hosts(self) -> tuple[HostPlan, ...]:
        return (self.shared, *self.docker_hosts)

    @property
    def seeds_swappable(self) -> bool:
        """Whether a running host could take a new seed (SWAPPABLE_SEED_PLATFORMS)."""
        return self.fleet.platform in SWAPPABLE_SEED_PLATFORMS

    @property
    def secrets(self) -> tuple[SecretRef, ...]:
        refs = [self.qdrant_api_key, self.seed_signing_key]
        for i in self.instances:
            refs += [i.db_password, i.redis_password, i.webui_secret_key, i.admin_password]
        if self.monitoring is not None:
            refs += [self.monitoring.postgres_password, self.monitoring.redis_password]
        return tuple(refs)

    @property
    def certificate_hosts(self) -> dict[str, str]:
        """Host name -> private address of every host that serves a shared service over TLS
        (with monitoring, every host: its exporters serve HTTPS): each has a server certificate
        from the fleet CA naming both."""
        every = self.monitoring is not None
        return {h.name: str(h.host.address) for h in self.hosts if h.services or every}

    @property
    def front_door_certificates(self) -> dict[str, tuple[str, ...]]:
        """Host name -> the host names its front door serves, for every host whose front door
        takes its certificates from the fleet CA (tls: internal)."""
        if self.front_door is None or self.front_door.tls != "internal":
            return {}
        return {
            h.name: tuple(sorted(i.server_name for i in h.instances if i.server_name))
            for h in self.hosts
            if h.instances
        }

    @property
    def scram_logins(self) -> tuple[tuple[SecretRef, str], ...]:
        """Passwords PostgreSQL keeps as SCRAM verifiers, each with its role (the salt's seed)."""
        logins = [(i.db_password, i.db_role) for i in self.instances]
        if self.monitoring is not None:
            logins.append((self.monitoring.postgres_password, MONITOR_ROLE))
        return tuple(logins)

    def instances_on(self, host_name: str) -> tuple[InstancePlan, ...]:
        return tuple(i for i in self.instances if i.host.name == host_name)

    def hosts_running(self, service: str) -> tuple[HostPlan, ...]:
        return tuple(h for h in self.hosts if service in h.services)


def client_networks(
    instances: Sequence[InstancePlan], service_host: Host
) -> tuple[IPv4Network, ...]:
    """Where ``instances`` reach ``service_host`` from, sorted, each once."""
    return tuple(sorted({i.source_network(service_host) for i in instances}))


def container_address(subnet: IPv4Network) -> IPv4Address:
    """The instance container's address: the one after the bridge's gateway (the first)."""
    return subnet.network_address + 2


def _instance_id(fleet: Fleet, host: Host) -> str:
    return f"{fleet.name}-{host.name}"


def make_plan(fleet: Fleet, allocations: Mapping[str, Allocation] | None = None) -> Plan:
    """Derive everything the targets need. Assumes a fleet that passed validation.

    ``allocations`` is what each instance holds of the fleet's shared ranges (its Redis port,
    Docker network and connection share: owuibuild.allocation), by name; without them, what a
    fleet with no records gets, which is each instance's positional values.
    """
    if allocations is None:
        allocations, problems = allocate(fleet, {})
        if problems:  # validation reports these; a plan cannot be made without them
            raise ValueError(problems[0].message)
    hosts_by_name = {h.name: h for h in fleet.all_hosts}
    placement = fleet.placement
    postgres_host = hosts_by_name[placement.postgres]
    redis_host = hosts_by_name[placement.redis]
    qdrant_hosts = tuple(hosts_by_name[n] for n in placement.qdrant)
    ollama_hosts = tuple(hosts_by_name[n] for n in placement.ollama)
    redis = fleet.shared.redis
    instances: list[InstancePlan] = []
    for inst in fleet.instances:
        host = hosts_by_name[inst.host]
        ident = identifier(inst.name)
        held = allocations[inst.name]
        if inst.pool_size is not None:
            pool, overflow = inst.pool_size, inst.max_overflow or 0
        elif held.connections is not None:
            pool, overflow = split_share(held.connections, inst.max_overflow)
        else:
            raise ValueError(f"instance {inst.name} has no connection share")
        redis_port = held.redis_port if redis.mode == "per-instance" else redis.base_port
        if redis_port is None:
            raise ValueError(f"instance {inst.name} has no Redis port")
        instances.append(
            InstancePlan(
                instance=inst,
                host=host,
                port=inst.port,
                bind_address=(
                    LOOPBACK
                    if fleet.front_door is not None
                    else "0.0.0.0"
                    if inst.public
                    else str(host.address)
                ),
                url=inst.url,
                server_name=server_name(inst.url),
                db_name=ident,
                db_role=ident,
                db_pool_size=pool,
                db_max_overflow=overflow,
                redis_address=redis_host.address,
                redis_port=redis_port,
                redis_user=inst.name,
                redis_key_prefix=inst.name,
                qdrant_collection_prefix=ident,
                bundle_dir=f"{BUNDLE_ROOT}/{inst.name}",
                data_dir=f"{DATA_MOUNT}/instances/{inst.name}",
                unit_name=f"owui-{inst.name}.service",
                db_password=SecretRef(f"instances.{inst.name}.db_password"),
                redis_password=SecretRef(f"instances.{inst.name}.redis_password"),
                webui_secret_key=SecretRef(f"instances.{inst.name}.webui_secret_key"),
                admin_password=SecretRef(f"instances.{inst.name}.admin_password"),
                docker_subnet=held.docker_subnet,
                container_address=container_address(held.docker_subnet),
            )
        )
    all_instances = tuple(instances)

    if redis.mode == "per-instance":
        redis_servers = tuple(
            RedisServerPlan(name=i.name, port=i.redis_port, instances=(i,)) for i in all_instances
        )
    else:
        redis_servers = (
            RedisServerPlan(name="shared", port=redis.base_port, instances=all_instances),
        )

    admin_nets = tuple(sorted(set(fleet.admin.allow_from)))
    cluster = (
        QdrantCluster(
            nodes=qdrant_hosts,
            p2p_port=QDRANT_P2P_PORT,
            replication_factor=fleet.shared.qdrant.replication_factor,
            bootstrap=qdrant_hosts[0],
        )
        if len(qdrant_hosts) > 1
        else None
    )
    peers = tuple(
        IPv4Network(f"{h.address}/32") for h in sorted(qdrant_hosts, key=lambda h: h.address)
    )

    def services_of(host: Host) -> frozenset[str]:
        placed = {
            "postgres": host == postgres_host,
            "redis": host == redis_host,
            "qdrant": host in qdrant_hosts,
            "ollama": host in ollama_hosts,
        }
        return frozenset(name for name, on in placed.items() if on)

    by_host: dict[str, list[InstancePlan]] = {}
    for planned in all_instances:
        by_host.setdefault(planned.host.name, []).append(planned)

    watch = fleet.monitoring
    monitor_host = hosts_by_name[placement.monitoring] if watch is not None else None
    # The monitoring host's address, admitted wherever it scrapes or probes.
    watcher = (IPv4Network((monitor_host.address, 32)),) if monitor_host is not None else ()

    def host_plan(host: Host, role: str) -> HostPlan:
        services = services_of(host)
        on_host = tuple(by_host.get(host.name, ()))
        rules = [FirewallRule("ssh", SSH_PORT, admin_nets)]
        rules += monitoring_rules(host, services, on_host)
        # Only a host of shared services admits the instances: looking at every instance for
        # every Docker host would make the plan quadratic in the fleet's size.
        clients = (
            client_networks(all_instances, host)
            if services & {"postgres", "qdrant", "ollama"}
            else ()
        )
        if clients and "postgres" in services:
            rules.append(FirewallRule("postgresql", POSTGRES_PORT, clients))
        if (clients or watcher) and "qdrant" in services:
            # the backup timer on the PostgreSQL host takes Qdrant snapshots over HTTP too
            backup_source = (
                (IPv4Network(f"{postgres_host.address}/32"),)
                if fleet.shared.backups.enabled and postgres_host != host
                else ()
            )
            rules.append(
                FirewallRule(
                    "qdrant", QDRANT_PORT, tuple(sorted({*clients, *backup_source, *watcher}))
                )
            )
        if cluster is not None and "qdrant" in services:
            rules.append(FirewallRule("qdrant-p2p", QDRANT_P2P_PORT, peers))
        if (clients or watcher) and "ollama" in services:
            rules.append(FirewallRule("ollama", OLLAMA_PORT, tuple(sorted({*clients, *watcher}))))
        if "redis" in services:
            for server in redis_servers:
                rules.append(
                    FirewallRule(
                        f"redis-{server.name}",
                        server.port,
                        client_networks(server.instances, host),
                    )
                )
        door = fleet.front_door
        if door is not None and on_host:
            everyone = (IPv4Network("0.0.0.0/0"),)
            sources = (
                everyone
                if door.allow_from is None
                else tuple(sorted({*door.allow_from, *watcher}))  # the probes of /health
            )
            rules.append(FirewallRule("front-door-http", HTTP_PORT, sources))
            rules.append(FirewallRule("front-door-https", HTTPS_PORT, sources))
        elif door is None:
            for i in on_host:
                sources = (
                    (IPv4Network("0.0.0.0/0"),)
                    if i.instance.public
                    else tuple(sorted({fleet.network.cidr, *watcher}))
                )
                rules.append(FirewallRule(f"openwebui-{i.name}", i.port, sources))
        return HostPlan(host, role, on_host, tuple(rules), _instance_id(fleet, host), services)

    def monitoring_rules(
        host: Host, services: frozenset[str], on_host: Sequence[InstancePlan]
    ) -> list[FirewallRule]:
        if monitor_host is None:
            return []
        rules = [FirewallRule("monitoring-node", NODE_EXPORTER_PORT, watcher)]
        if "postgres" in services:
            rules.append(FirewallRule("monitoring-postgres", POSTGRES_EXPORTER_PORT, watcher))
        if "redis" in services:
            rules.append(FirewallRule("monitoring-redis", REDIS_EXPORTER_PORT, watcher))
        if host == monitor_host:
            # The admins' own machines read it; with OpenTelemetry, every instance pushes to it.
            pushers = (
                client_networks(all_instances, host)
                if watch is not None and watch.openwebui_otel
                else ()
            )
            rules.append(
                FirewallRule("prometheus", PROMETHEUS_PORT, tuple(sorted({*admin_nets, *pushers})))
            )
        return rules

    shared = host_plan(fleet.shared.host, "shared")
    docker_hosts = tuple(host_plan(h, "docker") for h in fleet.hosts)

    ow = fleet.openwebui
    image = f"{ow.image}:v{ow.version}" + (f"@{ow.digest}" if ow.digest else "")
    models = tuple(
        dict.fromkeys((*fleet.shared.ollama.models, fleet.shared.ollama.embedding_model))
    )
    return Plan(
        fleet=fleet,
        instances=all_instances,
        shared=shared,
        docker_hosts=docker_hosts,
        redis_servers=redis_servers,
        ollama_url=f"https://{ollama_hosts[0].address}:{OLLAMA_PORT}",
        qdrant_url=f"https://{qdrant_hosts[0].address}:{QDRANT_PORT}",
        openwebui_image=image,
        openwebui_archive=(
            artifacts.openwebui_archive(ow.version, ow.archive_sha256)
            if ow.archive_sha256
            else None
        ),
        ollama_models=models,
        qdrant_api_key=SecretRef("qdrant.api_key"),
        backup_dir=fleet.shared.backups.directory or BACKUP_DIR,
        postgres_host=postgres_host,
        redis_host=redis_host,
        qdrant_hosts=qdrant_hosts,
        ollama_hosts=ollama_hosts,
        ollama_urls=tuple(f"https://{h.address}:{OLLAMA_PORT}" for h in ollama_hosts),
        qdrant_cluster=cluster,
        embedding_dimensions=embedding_dimensions(fleet),
        front_door=fleet.front_door,
        monitoring=(
            MonitoringPlan(
                settings=watch,
                host=monitor_host,
                postgres_password=SecretRef("monitoring.postgres_password"),
                redis_password=SecretRef("monitoring.redis_password"),
            )
            if watch is not None and monitor_host is not None
            else None
        ),
    )


def server_name(url: str | None) -> str | None:
    """The host name of a url (that passed validation), in lower case."""
    if url is None:
        return None
    authority = url.split("://", 1)[1].split("/", 1)[0]
    return authority.split(":", 1)[0].lower()


def embedding_dimensions(fleet: Fleet) -> int:
    o = fleet.shared.ollama
    found = o.embedding_dimensions or qdrant_access.known_dimensions(o.embedding_model)
    if found is None:  # validation reports this; a plan cannot be made without it
        raise ValueError(f"no vector length for embedding model {o.embedding_model}")
    return found


def estimated_memory_mb(
    host_instances: int, *, services: Collection[str] = (), redis_servers: int = 0
) -> int:
    """Rough resident memory a host needs; for the overcommit warning only."""
    per_service = {
        "postgres": MEMORY_MB_POSTGRES,
        "qdrant": MEMORY_MB_QDRANT,
        "ollama": MEMORY_MB_OLLAMA_IDLE,
        "redis": 16 * redis_servers,
    }
    total = MEMORY_MB_OS + host_instances * MEMORY_MB_OPENWEBUI
    return total + sum(mb for name, mb in per_service.items() if name in services)
