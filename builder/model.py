"""The fleet model: a validated blueprint as frozen dataclasses.

Built only from a document that passed validation (schema defaults already filled), so
constructors here trust shapes and types. Nothing here derives values; that is the plan's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from .release import RELEASES, Release


@dataclass(frozen=True)
class DataVolume:
    label: str
    device: str | None
    filesystem: str
    size_gb: int | None

    @staticmethod
    def from_data(d: dict[str, Any] | None) -> DataVolume | None:
        if d is None:
            return None
        return DataVolume(d["label"], d.get("device"), d["filesystem"], d.get("size_gb"))


@dataclass(frozen=True)
class Host:
    name: str
    address: IPv4Address
    memory_gb: int | None
    data_volume: DataVolume | None

    @staticmethod
    def from_data(d: dict[str, Any]) -> Host:
        return Host(
            d["name"],
            IPv4Address(d["address"]),
            d.get("memory_gb"),
            DataVolume.from_data(d.get("data_volume")),
        )


@dataclass(frozen=True)
class OS:
    distro: str
    timezone: str
    docker_source: str  # release.DOCKER_ARCHIVE or DOCKER_UPSTREAM, the release's default filled in

    @property
    def release(self) -> Release:
        return RELEASES[self.distro]

    @property
    def codename(self) -> str:
        return self.release.codename


@dataclass(frozen=True)
class Admin:
    user: str
    ssh_authorized_keys: tuple[str, ...]
    allow_from: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class Network:
    cidr: IPv4Network
    gateway: IPv4Address
    dns: tuple[IPv4Address, ...]
    interface: str
    container_pool: IPv4Network


@dataclass(frozen=True)
class Ollama:
    version: str
    sha256: str | None
    models: tuple[str, ...]
    embedding_model: str
    embedding_dimensions: int | None
    gpu: str
    keep_alive: str
    num_parallel: int
    max_loaded_models: int
    allow_model_management: bool


@dataclass(frozen=True)
class Qdrant:
    version: str
    sha256: str | None
    replication_factor: int


@dataclass(frozen=True)
class Postgres:
    version: int
    max_connections: int


@dataclass(frozen=True)
class Redis:
    mode: str
    maxmemory_mb: int
    base_port: int


@dataclass(frozen=True)
class Backups:
    enabled: bool
    keep: int
    on_calendar: str
    directory: str | None


@dataclass(frozen=True)
class Shared:
    host: Host
    ollama: Ollama
    qdrant: Qdrant
    postgres: Postgres
    redis: Redis
    backups: Backups


@dataclass(frozen=True)
class AdminAccount:
    """The admin Open WebUI creates at an instance's first start (its password is a secret)."""

    email: str
    name: str

    def overridden(self, d: dict[str, Any] | None) -> AdminAccount:
        return AdminAccount(**{**self.__dict__, **(d or {})})


@dataclass(frozen=True)
class Signup:
    enabled: bool
    default_role: str  # "pending" or "user"

    def overridden(self, d: dict[str, Any] | None) -> Signup:
        return Signup(**{**self.__dict__, **(d or {})})


# The schema's defaults for openwebui.admin and openwebui.signup (a unit test holds them equal):
# a field the blueprint leaves out of either still has a value.
DEFAULT_ADMIN = AdminAccount(email="admin@localhost", name="Admin")
DEFAULT_SIGNUP = Signup(enabled=False, default_role="pending")


@dataclass(frozen=True)
class OpenWebUI:
    version: str
    image: str
    digest: str | None
    archive_sha256: str | None  # load a `docker save` archive from the mirror instead of pulling
    admin: AdminAccount  # every instance's, unless it sets its own
    signup: Signup


@dataclass(frozen=True)
class Instance:
    name: str
    host: str
    port: int
    url: str | None
    public: bool
    env: tuple[tuple[str, str], ...]
    pool_size: int | None
    max_overflow: int | None
    admin: AdminAccount  # the fleet's, with this instance's own fields over it
    signup: Signup


@dataclass(frozen=True)
class Placement:
    """Host names that run each shared service (all default to the shared host)."""

    postgres: str
    redis: str
    qdrant: tuple[str, ...]
    ollama: tuple[str, ...]
    monitoring: str


@dataclass(frozen=True)
class Images:
    builders: tuple[str, ...]
    bake_models: bool
    preload_openwebui: bool


@dataclass(frozen=True)
class Acme:
    email: str
    directory: str | None  # None: Let's Encrypt's production directory
    directory_ca: str | None  # PEM of the CA behind a private ACME directory's HTTPS


@dataclass(frozen=True)
class FrontDoor:
    """HTTPS in front of every instance (Caddy on each host that runs instances)."""

    tls: str  # "internal" (the fleet CA) or "acme"
    acme: Acme | None
    max_upload_mb: int
    allow_from: tuple[IPv4Network, ...] | None  # None: public, everyone


@dataclass(frozen=True)
class EmailReceiver:
    to: str
    sender: str
    smarthost: str  # host:port of the SMTP relay


@dataclass(frozen=True)
class Monitoring:
    """Prometheus (and Alertmanager with a receiver) on the monitoring host, exporters on every
    host, targets and alert rules from the plan (blueprint: monitoring)."""

    retention: str  # Prometheus's --storage.tsdb.retention.time, e.g. 15d
    openwebui_otel: bool  # instances push OpenTelemetry metrics to Prometheus's OTLP receiver
    backup_max_age: str  # the newest backup may be this old before an alert fires, e.g. 26h
    webhook: str | None  # Alertmanager delivers to this URL ...
    email: EmailReceiver | None  # ... or to this mailbox; neither: alerts stay in Prometheus


@dataclass(frozen=True)
class Fleet:
    name: str
    os: OS
    platform: str
    mirror: str | None
    admin: Admin
    network: Network
    shared: Shared
    hosts: tuple[Host, ...]
    openwebui: OpenWebUI
    instances: tuple[Instance, ...]
    images: Images
    placement: Placement
    front_door: FrontDoor | None = None
    monitoring: Monitoring | None = None

    @staticmethod
    def from_data(d: dict[str, Any]) -> Fleet:
        release = RELEASES[d["os"]["distro"]]
        os_ = OS(
            release.distro,
            d["os"]["timezone"],
            d["os"].get("docker_source", release.docker_default),
        )
        s = d["shared"]
        o, q, p, r = s["ollama"], s["qdrant"], s["postgres"], s["redis"]
        w = d["openwebui"]
        openwebui = OpenWebUI(
            w["version"],
            w["image"],
            w.get("digest"),
            w.get("archive_sha256"),
            DEFAULT_ADMIN.overridden(w.get("admin")),
            DEFAULT_SIGNUP.overridden(w.get("signup")),
        )
        return Fleet(
            name=d["name"],
            os=os_,
            platform=d["platform"],
            mirror=d.get("mirror"),
            admin=Admin(
                d["admin"]["user"],
                tuple(d["admin"]["ssh_authorized_keys"]),
                tuple(IPv4Network(n) for n in d["admin"]["allow_from"]),
            ),
            network=Network(
                IPv4Network(d["network"]["cidr"]),
                IPv4Address(d["network"]["gateway"]),
                tuple(IPv4Address(a) for a in d["network"]["dns"]),
                d["network"]["interface"],
                IPv4Network(d["network"]["container_pool"]),
            ),
            shared=Shared(
                host=Host.from_data(s["host"]),
                ollama=Ollama(
                    o["version"],
                    o.get("sha256"),
                    tuple(o["models"]),
                    o["embedding_model"],
                    o.get("embedding_dimensions"),
                    o["gpu"],
                    o["keep_alive"],
                    o["num_parallel"],
                    o["max_loaded_models"],
                    o["allow_model_management"],
                ),
                qdrant=Qdrant(
                    q["version"],
                    q.get("sha256"),
                    q["replication_factor"],
                ),
                postgres=Postgres(p.get("version", release.postgres_major), p["max_connections"]),
                redis=Redis(r["mode"], r["maxmemory_mb"], r["base_port"]),
                backups=Backups(
                    s["backups"]["enabled"],
                    s["backups"]["keep"],
                    s["backups"]["on_calendar"],
                    s["backups"].get("directory"),
                ),
            ),
            hosts=tuple(Host.from_data(h) for h in d["hosts"]),
            openwebui=openwebui,
            instances=tuple(
                Instance(
                    name=i["name"],
                    host=i["host"],
                    port=i["port"],
                    url=i.get("url"),
                    public=i["public"],
                    env=tuple(sorted(i["env"].items())),
                    pool_size=i.get("database", {}).get("pool_size"),
                    max_overflow=i.get("database", {}).get("max_overflow"),
                    admin=openwebui.admin.overridden(i.get("admin")),
                    signup=openwebui.signup.overridden(i.get("signup")),
                )
                for i in d["instances"]
            ),
            images=Images(
                tuple(d["images"]["builders"]),
                d["images"]["bake_models"],
                d["images"]["preload_openwebui"],
            ),
            front_door=_front_door(d.get("front_door"), d["network"]["cidr"]),
            monitoring=_monitoring(d.get("monitoring"), s["backups"]["on_calendar"]),
            placement=Placement(
                postgres=d["placement"].get("postgres", s["host"]["name"]),
                redis=d["placement"].get("redis", s["host"]["name"]),
                qdrant=tuple(d["placement"].get("qdrant", [s["host"]["name"]])),
                ollama=tuple(d["placement"].get("ollama", [s["host"]["name"]])),
                monitoring=d["placement"].get("monitoring", s["host"]["name"]),
            ),
        )

    @property
    def all_hosts(self) -> tuple[Host, ...]:
        """The shared host first, then the Docker hosts, each once."""
        return (self.shared.host, *self.hosts)


def _front_door(d: dict[str, Any] | None, network: str) -> FrontDoor | None:
    if d is None:
        return None
    a = d.get("acme")
    allow = d.get("allow_from", [network])
    return FrontDoor(
        tls=d["tls"],
        acme=Acme(a["email"], a.get("directory"), a.get("directory_ca")) if a else None,
        max_upload_mb=d["max_upload_mb"],
        allow_from=None if allow == "public" else tuple(IPv4Network(n) for n in allow),
    )


# How old the newest backup may grow, by the backup schedule's keyword: one period and a margin.
BACKUP_MAX_AGE = {"hourly": "2h", "daily": "26h", "weekly": "8d", "monthly": "32d"}
DEFAULT_BACKUP_MAX_AGE = "26h"


def backup_max_age(on_calendar: str) -> str:
    return BACKUP_MAX_AGE.get(on_calendar.strip().lower(), DEFAULT_BACKUP_MAX_AGE)


def _monitoring(d: dict[str, Any] | None, on_calendar: str) -> Monitoring | None:
    if d is None:
        return None
    alerts = d.get("alerts", {})
    email = alerts.get("email")
    return Monitoring(
        retention=d["retention"],
        openwebui_otel=d["openwebui_otel"],
        backup_max_age=d.get("backup_max_age") or backup_max_age(on_calendar),
        webhook=alerts.get("webhook"),
        email=EmailReceiver(email["to"], email["from"], email["smarthost"]) if email else None,
    )
