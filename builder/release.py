"""Distribution releases: every fact that differs by release, in one table.

A blueprint names a release (`os.distro`); everything that follows from that choice is read from
its `Release` row here and nowhere else: the codename, the PostgreSQL and Redis majors the archive
ships, package names, where Docker comes from, and the cloud image Packer starts from. Adding a
release means adding a row. Pure data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# Where Docker Engine and compose v2 can come from on a host.
DOCKER_ARCHIVE = "archive"  # the distribution's own signed archive (docker.io + compose v2)
DOCKER_UPSTREAM = "docker"  # Docker's own apt repository (key embedded, signed-by)
DOCKER_SOURCES = (DOCKER_ARCHIVE, DOCKER_UPSTREAM)

# Docker's own repository: the same package set on every release it serves, and a current
# engine (the oldest major a host installing from it today can get).
DOCKER_UPSTREAM_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin")
DOCKER_UPSTREAM_ENGINE = 27


@dataclass(frozen=True)
class BaseImage:
    """Where a release's official cloud image comes from, per Packer builder."""

    qemu_url: str
    qemu_checksum: str  # Packer's "file:<url>" form: checked against the published sums
    ami_owner: str
    ami_name: str
    ami_root_device: str
    cloud_user: str  # the image's default cloud-init user


@dataclass(frozen=True)
class Release:
    distro: str  # the blueprint's os.distro
    family: str  # "debian" or "ubuntu": the path under Docker's repository
    codename: str
    postgres_major: int
    redis_major: int
    # Docker from the archive: None where the archive has no compose v2 (Debian 12: 1.29 only).
    docker_archive_packages: tuple[str, ...] | None
    docker_archive_engine: int  # the major of the archive's docker.io (what its features allow)
    docker_default: str  # DOCKER_ARCHIVE or DOCKER_UPSTREAM
    base_image: BaseImage
    # The archive's Prometheus has the OTLP receiver (otlp-write-receiver), which Open WebUI's
    # OpenTelemetry metrics need. None does yet: Debian 13's 2.53 is built without it (its
    # patch 0019-Disable-OTLP-Ingestion-endpoint), Debian 12's 2.42 predates it.
    otlp_receiver: bool = False

    def docker_packages(self, source: str) -> tuple[str, ...]:
        if source == DOCKER_UPSTREAM:
            return DOCKER_UPSTREAM_PACKAGES
        if self.docker_archive_packages is None:
            raise ValueError(f"{self.distro}'s archive has no compose v2")
        return self.docker_archive_packages

    def docker_engine(self, source: str) -> int:
        """The Docker Engine major a host of this release gets from ``source``."""
        return DOCKER_UPSTREAM_ENGINE if source == DOCKER_UPSTREAM else self.docker_archive_engine

    @property
    def docker_sources(self) -> tuple[str, ...]:
        """The Docker sources this release supports, its default first."""
        supported = [
            s for s in DOCKER_SOURCES if s == DOCKER_UPSTREAM or self.docker_archive_packages
        ]
        return tuple(sorted(supported, key=lambda s: s != self.docker_default))


def _debian_image(version: int, codename: str) -> BaseImage:
    base = f"https://cloud.debian.org/images/cloud/{codename}/latest/"
    return BaseImage(
        qemu_url=f"{base}debian-{version}-genericcloud-amd64.qcow2",
        qemu_checksum=f"file:{base}SHA512SUMS",
        ami_owner="136693071363",
        ami_name=f"debian-{version}-amd64-*",
        ami_root_device="/dev/xvda",
        cloud_user="admin",
    )


RELEASES: MappingProxyType[str, Release] = MappingProxyType(
    {
        "debian-12": Release(
            distro="debian-12",
            family="debian",
            codename="bookworm",
            postgres_major=15,
            redis_major=7,
            docker_archive_packages=None,  # docker.io 20.10 with compose v1 (1.29) only
            docker_archive_engine=20,
            docker_default=DOCKER_UPSTREAM,
            base_image=_debian_image(12, "bookworm"),
        ),
        "debian-13": Release(
            distro="debian-13",
            family="debian",
            codename="trixie",
            postgres_major=17,
            redis_major=8,
            # docker.io 26.1 only recommends its CLI; compose v2 2.26 is a CLI plugin.
            docker_archive_packages=("docker.io", "docker-cli", "docker-compose"),
            docker_archive_engine=26,
            docker_default=DOCKER_ARCHIVE,
            base_image=_debian_image(13, "trixie"),
        ),
        "ubuntu-24.04": Release(
            distro="ubuntu-24.04",
            family="ubuntu",
            codename="noble",
            postgres_major=16,
            redis_major=7,
            docker_archive_packages=("docker.io", "docker-compose-v2"),
            docker_archive_engine=24,  # as released; the archive's updates may carry a newer one
            docker_default=DOCKER_ARCHIVE,
            base_image=BaseImage(
                qemu_url="https://cloud-images.ubuntu.com/releases/noble/release/"
                "ubuntu-24.04-server-cloudimg-amd64.img",
                qemu_checksum="file:https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS",
                ami_owner="099720109477",
                ami_name="ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
                ami_root_device="/dev/sda1",
                cloud_user="ubuntu",
            ),
        ),
    }
)

# What a blueprint without `os.distro` means. It never changes silently: moving it would move
# every such fleet to another PostgreSQL major on its next host replacement.
DEFAULT_DISTRO = "debian-12"
# What `owuibuild init` and the examples start new fleets on.
NEW_FLEET_DISTRO = "debian-13"
