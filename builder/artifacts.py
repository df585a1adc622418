"""Pinned upstream artifacts: which release files owuibuild installs, and their sha256.

Every checksum here was copied from a published source named next to it; none was computed or
invented. A version missing from these tables is accepted only when the blueprint supplies its
sha256 (validation says so). Pure data and lookups; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# Ollama: copied from the official per-release sha256sum.txt, as mirrored in
# cashapp/hermit-packages ollama.hcl (commit 2d6e703febccf26fe60148baedd95129cbe9ef3c).
OLLAMA_SHA256: dict[str, str] = {
    "0.12.3": "649ac33e3e22304f650207e4f6379dbc2c2397d840593caf5bba6605c2886229",
    "0.12.5": "e0d20dac3358403ef17f880168f32a59b911f3875c509d2d256bd70acce9360e",
    # 0.12.6 also in wi2trier/gpu-server overlays/packages/ollama-bin.nix (3bd4fe3c).
    "0.12.6": "de82adce2ab79235115d511ff22fcb099ac53b67127870f12b80198c033ec0a1",
    "0.12.7": "b59bd263c8888c1e09e5054b16030ad052f8edd3dbf6be4b4c9ab5ee422ea04f",
    "0.12.8": "1834dd42f1a92a7ed4a76fb62efdcecd8ec3cf6037ce3710323b68bc481102c7",
    "0.12.9": "f9784545497bc7475087b2c7b1430299173564cbd7a99d2b1f23ef4a40b4453b",
    "0.12.10": "8f4bf70a9856a34ba71355745c2189a472e2691a020ebd2e242a58e4d2094722",
    "0.12.11": "fb140ea4243706d0087b0108418ee5c6f74edcebf5f14e2f289b8e36bd303d0f",
    "0.13.0": "c5e5b4840008d9c9bf955ec32c32b03afc57c986ac1c382d44c89c9f7dd2cc30",
    "0.13.1": "4997753db0c578d24f8fc95d1538741609d72529ab6e913ecbf910ae919b0232",
}

# Qdrant publishes no checksum file. These are binary release asset hashes (x86_64 musl build,
# static, so it runs on Debian 12's glibc 2.36): 1.15.3 and 1.17.1 from
# JuliaPackaging/Yggdrasil Q/Qdrant/build_tarballs.jl (CI-checked BinaryBuilder sources);
# 1.18.3, 1.19.0 and 1.19.1 agree across Yggdrasil and several unrelated public repos.
QDRANT_SHA256: dict[str, str] = {
    "1.15.3": "9393a79ad9c2e1e07efa1612d091cc4812cdfebfda1a6186e6925ae7c0a9fe0e",
    "1.17.1": "4028d5e753de53bda82fa487df25353f668e785c3dfff66dfa636e2203a82b3a",
    "1.18.3": "b4faedcdf8c9577bf1c8f2ab9b454636b87e056c116c99d49bd4f9fb2e634285",
    "1.19.0": "9ec667456443463eee390e43cd36988af6b730c6db807b4e39f57c303d0264a3",
    "1.19.1": "70a40529e2ebe0a2787d574d3a2e28437cfe94f26f24fa419f6ac57b4ae817c9",
}


@dataclass(frozen=True)
class Artifact:
    """One pinned release file."""

    name: str  # "ollama" or "qdrant"
    version: str
    filename: str
    sha256: str
    upstream_url: str

    def url(self, mirror: str | None) -> str:
        """Where to fetch it: the mirror when the blueprint names one, else upstream."""
        return f"{mirror.rstrip('/')}/{self.filename}" if mirror else self.upstream_url


def ollama_filename(version: str) -> str:
    return f"ollama-linux-amd64-v{version}.tgz"


def qdrant_filename(version: str) -> str:
    return f"qdrant-x86_64-unknown-linux-musl-v{version}.tar.gz"


def ollama(version: str, sha256: str | None = None) -> Artifact | None:
    digest = sha256 or OLLAMA_SHA256.get(version)
    if digest is None:
        return None
    return Artifact(
        "ollama",
        version,
        ollama_filename(version),
        digest,
        f"https://github.com/ollama/ollama/releases/download/v{version}/ollama-linux-amd64.tgz",
    )


def qdrant(version: str, sha256: str | None = None) -> Artifact | None:
    digest = sha256 or QDRANT_SHA256.get(version)
    if digest is None:
        return None
    return Artifact(
        "qdrant",
        version,
        qdrant_filename(version),
        digest,
        f"https://github.com/qdrant/qdrant/releases/download/v{version}/"
        "qdrant-x86_64-unknown-linux-musl.tar.gz",
    )


def openwebui_archive_filename(version: str) -> str:
    return f"openwebui-v{version}.docker.tar"


def openwebui_archive(version: str, sha256: str) -> Artifact:
    """A `docker save` archive of the Open WebUI image, which only a mirror serves."""
    filename = openwebui_archive_filename(version)
    return Artifact("openwebui-image", version, filename, sha256, upstream_url=filename)


DOCKER_APT_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"


def docker_apt_key() -> str:
    """Docker's apt signing key (armored), embedded so hosts never fetch it unverified."""
    from importlib import resources

    return (
        resources.files("owuibuild").joinpath("data/docker-archive-keyring.asc").read_text("ascii")
    )
