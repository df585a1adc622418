"""Target: the NoCloud seed files of every host: user-data, meta-data, network-config.

user-data is the merge of the host-configuration sections (see owuibuild.hostconfig) that
apply to the host, serialized from data. It embeds secrets, so it is a secret file.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Any

from .. import yamldump
from ..hostconfig import merge, parts_for
from ..plan import HostPlan, Plan
from ..secrets import Secrets
from . import Artifact


def dump_yaml(doc: Any) -> str:
    return yamldump.dump(doc, literal_blocks=True, allow_unicode=True, width=100)


# Largest user-data each platform accepts, in bytes (None: no limit). cloud-init reads
# gzip-compressed user-data, so a document over the limit is gzipped before it is refused.
USER_DATA_LIMITS: dict[str, int | None] = {
    "ec2": 16384,
    "azure": 65536,
    "openstack": 65536,
    "gce": 262144,
}


class UserDataTooLarge(ValueError):
    """Even gzip-compressed, a host's user-data exceeds its platform's limit."""


def fit_user_data(raw: bytes, platform: str, host: str) -> bytes:
    """``raw`` when it fits the platform's limit, else its deterministic gzip form.

    Raises UserDataTooLarge when even that does not fit. (Targets cannot report warnings; the
    gzip form is self-describing: verify and cloud-init both recognise its magic bytes.)
    """
    limit = USER_DATA_LIMITS.get(platform)
    if limit is None or len(raw) <= limit:
        return raw
    packed = gzip.compress(raw, compresslevel=9, mtime=0)  # no name, no clock: reproducible
    if len(packed) > limit:
        raise UserDataTooLarge(
            f"user-data of host '{host}' is {len(raw)} bytes ({len(packed)} gzipped), over the "
            f"{limit}-byte limit of platform {platform}: move instances to other hosts, or use "
            "a platform without the limit (nocloud, proxmox, libvirt)"
        )
    return packed


GZIP_MAGIC = b"\x1f\x8b"


def is_packed(data: bytes) -> bool:
    """Whether fit_user_data gzipped this user-data."""
    return data[:2] == GZIP_MAGIC


def unpack_user_data(data: bytes) -> bytes:
    """The cloud-config text of a rendered user-data, gzipped by fit_user_data or not."""
    return gzip.decompress(data) if is_packed(data) else data


def user_data(plan: Plan, host: HostPlan, secrets: Secrets) -> bytes:
    doc = merge(parts_for(plan, host, secrets))
    raw = ("#cloud-config\n" + dump_yaml(doc)).encode()
    return fit_user_data(raw, plan.fleet.platform, host.name)


def meta_data(host: HostPlan) -> bytes:
    return dump_yaml({"instance-id": host.instance_id, "local-hostname": host.name}).encode()


def network_config(plan: Plan, host: HostPlan) -> bytes:
    net = plan.fleet.network
    doc = {
        "version": 2,
        "ethernets": {
            "primary": {
                "match": {"name": net.interface},
                "addresses": [f"{host.host.address}/{net.cidr.prefixlen}"],
                "routes": [{"to": "0.0.0.0/0", "via": str(net.gateway)}],
                "nameservers": {"addresses": [str(a) for a in net.dns]},
            }
        },
    }
    return dump_yaml(doc).encode()


SEED_FILES = ("user-data", "meta-data", "network-config")


def render(plan: Plan, secrets: Secrets) -> Iterable[Artifact]:
    from ..seed_iso import make_seed_iso

    for host in plan.hosts:
        base = f"hosts/{host.name}"
        seed = {
            "user-data": user_data(plan, host, secrets),
            "meta-data": meta_data(host),
            "network-config": network_config(plan, host),
        }
        yield Artifact(f"{base}/user-data", seed["user-data"], secret=True)
        yield Artifact(f"{base}/meta-data", seed["meta-data"])
        yield Artifact(f"{base}/network-config", seed["network-config"])
        # The ISO carries user-data, so it is as secret as user-data.
        yield Artifact(f"{base}/seed.iso", make_seed_iso(seed), secret=True)
