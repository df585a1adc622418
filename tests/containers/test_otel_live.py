"""Containers tier: why owuibuild refuses monitoring.openwebui_otel on every release it knows.

Open WebUI 0.12.4 exports its OpenTelemetry metrics over OTLP only (gRPC or HTTP; it has no
scrape endpoint), and Prometheus takes OTLP only through its OTLP receiver
(--enable-feature=otlp-write-receiver, from 2.47). Debian 13's archive carries prometheus 2.53,
but Debian builds it without the receiver (its patch 0019-Disable-OTLP-Ingestion-endpoint):
the flag is an unknown option there, and the receiver's path answers 404. So no release row
claims `otlp_receiver`, and validation refuses `openwebui_otel: true` with that reason.

This module runs the REAL Prometheus from Debian 13's archive (tests/containers/otel/
prometheus.Dockerfile, FROM the trixie tools image of tests/infra/trixie-tools.sh, cached under
a tag with a hash of its recipe and base) with the flag owuibuild would add, in a container
without a network, and asserts both facts, and that the release table agrees.
If Debian ever ships the receiver, the first test fails: then set `otlp_receiver` for that
release, and prove the push end to end.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unavailable
from infra.trixie_tools import trixie_tools
from infra.trixie_tools import unavailable_reason as trixie_unavailable_reason
from owuibuild.release import RELEASES
from test_instances_live import run

pytestmark = pytest.mark.containers

RECIPES = Path(__file__).with_name("otel")
PROMETHEUS_DOCKERFILE = RECIPES / "prometheus.Dockerfile"
PROMETHEUS_IMAGE = "local/owuibuild-otel-prometheus"
BUILD_TIMEOUT = 1200
# What Prometheus logs when its build lacks the OTLP receiver, as Debian 13's does.
UNKNOWN_FEATURE = 'msg="Unknown option for --enable-feature" option=otlp-write-receiver'
OTLP_PATH = "/api/v1/otlp/v1/metrics"
# A minimal configuration: this module looks at the receiver, not at any scrape.
CONFIG = "global: {scrape_interval: 1h}\n"


# -- the images ---------------------------------------------------------------------------------


def image_exists(ref: str) -> bool:
    return run("docker", "image", "inspect", ref, check=False).returncode == 0


def build(dockerfile: Path, base: str, tag_name: str, workdir: Path, *extra: Path) -> str:
    """Build ``dockerfile`` FROM ``base`` (its image id in the hash) unless cached."""
    base_id = run("docker", "image", "inspect", "-f", "{{.Id}}", base).stdout.strip()
    digest = hashlib.sha256(dockerfile.read_bytes() + base_id.encode()).hexdigest()[:16]
    ref = f"{tag_name}:{digest}"
    if image_exists(ref):
        return ref
    context = workdir / f"build-{dockerfile.stem}"
    context.mkdir()
    (context / "Dockerfile").write_bytes(dockerfile.read_bytes())
    for path in extra:
        (context / path.name).write_bytes(path.read_bytes())
    started = time.monotonic()
    run("docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", ref, str(context),
        timeout=BUILD_TIMEOUT)  # fmt: skip
    print(f"\notel: built {ref} in {time.monotonic() - started:.0f} s")
    return ref


def prometheus_image(workdir: Path) -> str:
    reason = trixie_unavailable_reason(docker_image=True)
    if reason:
        unavailable(f"the Debian 13 base image for Prometheus 2.53: {reason}")
    base = trixie_tools(docker_image=True)["OWUIBUILD_TRIXIE_IMAGE"]
    return build(PROMETHEUS_DOCKERFILE, base, PROMETHEUS_IMAGE, workdir)


@pytest.fixture(scope="module")
def prometheus_13(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Debian 13's Prometheus, running with the OTLP feature flag: (container, its log)."""
    image = prometheus_image(tmp_path_factory.mktemp("otel"))
    name = f"owuibuild-otel-{int(time.time())}"
    script = (
        f"printf '{CONFIG}' > /tmp/prometheus.yml && exec prometheus"
        " --config.file=/tmp/prometheus.yml --storage.tsdb.path=/tmp/data"
        " --web.listen-address=127.0.0.1:9090 --enable-feature=otlp-write-receiver"
    )
    run("docker", "run", "-d", "--name", name, "--network", "none", image, "sh", "-c", script)
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = run(
                "docker", "exec", name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "http://127.0.0.1:9090/-/ready", check=False,
            ).stdout  # fmt: skip
            if ready == "200":
                break
            assert time.monotonic() < deadline, run("docker", "logs", name, check=False).stderr
            time.sleep(1)
        yield name, run("docker", "logs", name, check=False).stderr
    finally:
        run("docker", "rm", "-f", name, check=False)


def test_debian_13_prometheus_has_no_otlp_receiver(prometheus_13: tuple[str, str]) -> None:
    name, log = prometheus_13
    version = run("docker", "exec", name, "prometheus", "--version").stdout
    assert "version 2.53" in version, version
    assert UNKNOWN_FEATURE in log, log
    code = run(
        "docker", "exec", name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
        "-X", "POST", "-H", "Content-Type: application/x-protobuf", "--data-binary", "",
        f"http://127.0.0.1:9090{OTLP_PATH}", check=False,
    ).stdout  # fmt: skip
    assert code == "404", code
    # Prometheus's own API answers on the same listener: the 404 is the receiver's absence.
    api = run(
        "docker", "exec", name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
        "http://127.0.0.1:9090/api/v1/status/buildinfo", check=False,
    ).stdout  # fmt: skip
    assert api == "200", api
    # ...and so no release row claims it (validation refuses openwebui_otel: see
    # tests/unit/test_monitoring.py).
    assert not RELEASES["debian-13"].otlp_receiver
