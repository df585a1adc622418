"""Target: the NoCloud seed files of every host: user-data, meta-data, network-config, and the
signed seed manifest (owuibuild-seed.json and owuibuild-seed.sig), each also packed into
seed.iso.

user-data is the merge of the host-configuration sections (see owuibuild.hostconfig) that
apply to the host, serialized from data. It embeds secrets, so it is a secret file. Its
generation, and so its applied-seed record, follows from the content of the seed without them
and the secret store's record of the host (see owuibuild.seed_manifest).
"""

from __future__ import annotations

import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import seed_manifest, yamldump
from ..hostconfig import File, exporters, live_plan, merge, parts_for, replacement_components
from ..plan import HostPlan, Plan
from ..secrets import Secrets
from ..seed_manifest import SeedRecord
from ..seed_signing import signing_key
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
    return host_seed(plan, host, secrets).files["user-data"]


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


@dataclass(frozen=True)
class Seed:
    """A host's seed: its files by name as they go on the cidata volume (SEED_FILES and the
    signed manifest), and the record the secret store keeps of it."""

    files: Mapping[str, bytes]
    record: SeedRecord


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_seed(plan: Plan, host: HostPlan, secrets: Secrets) -> Seed:
    parts = parts_for(plan, host, secrets)
    doc = merge(parts)
    meta, network = meta_data(host), network_config(plan, host)
    # Everything but the generation decides the generation: the record file below is left out.
    content = seed_manifest.content_digest(doc, meta, network)
    components = {
        **replacement_components(parts, doc),
        "meta-data": _sha256(meta),
        "network-config": _sha256(network),
    }
    record = seed_manifest.next_record(secrets.seeds.get(host.name), content, components)
    key = seed_manifest.replacement_key(components)
    fleet = plan.fleet.name
    live = live_plan(parts)
    applied = File(
        seed_manifest.APPLIED_PATH,
        seed_manifest.applied(fleet, host.name, record.generation, content, key, live["files"]),
    )
    # Written with the seed's other files at first boot; the converge rewrites it.
    doc.setdefault("write_files", []).append(applied.as_cloud_config())
    if plan.monitoring is not None:  # the node exporter tells `owuibuild status` the generation
        metric = File(
            exporters.SEED_METRICS, seed_manifest.generation_metric(record.generation), defer=True
        )
        doc["write_files"].append(metric.as_cloud_config())
    raw = ("#cloud-config\n" + dump_yaml(doc)).encode()
    files = {
        "user-data": fit_user_data(raw, plan.fleet.platform, host.name),
        "meta-data": meta,
        "network-config": network,
    }
    signed = seed_manifest.manifest(fleet, host.name, record.generation, content, files, key, live)
    signature = signing_key(secrets[plan.seed_signing_key.name]).sign(signed)
    files[seed_manifest.MANIFEST] = signed
    files[seed_manifest.SIGNATURE] = signature
    return Seed(files, record)


# The pipeline asks for each host's record after rendering: one seed per host and render.
# Entries hold their plan and secrets, so the ids in a key cannot be reused while they live.
_SEEDS: OrderedDict[tuple[int, int, str], tuple[Plan, Secrets, Seed]] = OrderedDict()
_SEEDS_SIZE = 64


def host_seed(plan: Plan, host: HostPlan, secrets: Secrets) -> Seed:
    """``host``'s seed (pure; memoized per render)."""
    key = (id(plan), id(secrets), host.name)
    hit = _SEEDS.get(key)
    if hit is not None and hit[0] is plan and hit[1] is secrets:
        return hit[2]
    seed = make_seed(plan, host, secrets)
    _SEEDS[key] = (plan, secrets, seed)
    if len(_SEEDS) > _SEEDS_SIZE:
        _SEEDS.popitem(last=False)
    return seed


def render(plan: Plan, secrets: Secrets) -> Iterable[Artifact]:
    from ..seed_iso import make_seed_iso

    for host in plan.hosts:
        base = f"hosts/{host.name}"
        seed = host_seed(plan, host, secrets)
        for name, data in seed.files.items():
            # user-data embeds secrets; the manifest and signature name only digests.
            yield Artifact(f"{base}/{name}", data, secret=name == "user-data")
        # The ISO carries user-data, so it is as secret as user-data.
        yield Artifact(f"{base}/seed.iso", make_seed_iso(seed.files), secret=True)
