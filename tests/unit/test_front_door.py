"""The front door (blueprint front_door): validation, plan, Caddy's configuration, the
instances' settings behind a proxy, the fleet CA's certificates and status through it.

Caddy itself runs on these configurations in the validators tier (caddy validate) and the
containers and boot tiers (real requests); here each property is checked on the data.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Rendered
from fleetdoc import BASE, diagnose, edit, one, where
from owuibuild import pki, status
from owuibuild.diagnostics import Severity
from owuibuild.hostconfig import front_door
from owuibuild.hostconfig.docker import health_url

pytestmark = pytest.mark.unit

URLS = edit(
    edit(BASE, "{name: one, host: web-a, port: 3001}", "{name: one, host: web-a, port: 3001, url: https://one.fleet.test}"),
    "{name: two, host: web-b, port: 3001}",
    "{name: two, host: web-b, port: 3001, url: https://Two.Fleet.test/}",
)  # fmt: skip
INTERNAL = URLS + "front_door: {tls: internal}\n"


def errors(text: str) -> list[Any]:
    return [d for d in diagnose(text) if d.severity is Severity.ERROR]


def test_an_internal_front_door_with_a_url_per_instance_is_clean() -> None:
    assert diagnose(INTERNAL) == []


def test_an_instance_without_a_url_is_an_error_at_the_instance() -> None:
    text = edit(INTERNAL, ", url: https://one.fleet.test", "")
    d = one(diagnose(text), "instances[0]")
    assert d.severity is Severity.ERROR
    assert "has no url" in d.message and "host name" in d.message
    assert d.hint and "https://one." in d.hint
    assert (d.line, d.column) == where(text, "{name: one")


def test_two_instances_with_one_host_name_is_an_error_at_the_second() -> None:
    text = edit(INTERNAL, "https://Two.Fleet.test/", "https://ONE.fleet.test")
    d = one(diagnose(text), "instances[1].url")
    assert d.message == "host name one.fleet.test is already the url of instance 'one'"
    assert d.hint == "give each instance a host name of its own"
    assert (d.line, d.column) == where(text, "https://ONE.fleet.test")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://one.fleet.test", "is not https"),
        ("https://one.fleet.test:8443", "names port 8443"),
        ("https://one.fleet.test/chat", "has the path /chat"),
        ("https://10.0.5.20", "names an address"),
    ],
)
def test_urls_the_front_door_cannot_serve_are_errors(url: str, words: str) -> None:
    text = edit(INTERNAL, "https://one.fleet.test", url)
    (d,) = errors(text)
    assert d.path == ("instances", 0, "url") and words in d.message, d.as_dict()
    assert d.hint


def test_port_443_spelt_out_is_the_front_doors_own() -> None:
    assert diagnose(edit(INTERNAL, "https://one.fleet.test", "https://one.fleet.test:443")) == []


@pytest.mark.parametrize("port", [80, 443])
def test_an_instance_on_a_front_door_port_is_an_error(port: int) -> None:
    text = edit(INTERNAL, "port: 3001, url: https://one", f"port: {port}, url: https://one")
    d = one(diagnose(text), "instances[0].port")
    assert d.severity is Severity.ERROR
    assert f"port {port} is the front door's" in d.message
    assert (d.line, d.column) == where(text, f"port: {port}", str(port))


def test_public_instances_and_a_front_door_do_not_mix() -> None:
    text = edit(
        INTERNAL, "url: https://one.fleet.test}", "url: https://one.fleet.test, public: true}"
    )
    d = one(diagnose(text), "instances[0].public")
    assert d.severity is Severity.ERROR and d.hint and "allow_from: public" in d.hint


def test_acme_needs_an_account() -> None:
    d = one(diagnose(URLS + "front_door: {tls: acme, allow_from: public}\n"), "front_door.tls")
    assert d.severity is Severity.ERROR and d.hint and "email" in d.hint


def test_acme_for_a_name_no_public_ca_issues_is_a_warning_not_an_error() -> None:
    text = URLS + "front_door: {tls: acme, acme: {email: ops@fleet.org}, allow_from: public}\n"
    found = diagnose(text)
    assert all(d.severity is Severity.WARNING for d in found)
    assert {d.path for d in found} == {("instances", 0, "url"), ("instances", 1, "url")}
    assert "one.fleet.test is not a public DNS name" in found[0].message
    public = re.sub(r"\.fleet\.test", ".fleet-school.org", text, flags=re.IGNORECASE)
    assert diagnose(public) == []


def test_acme_behind_a_closed_firewall_is_a_warning() -> None:
    text = URLS.replace(".fleet.test", ".fleet-school.org") + (
        "front_door: {tls: acme, acme: {email: ops@fleet.org}, allow_from: [10.0.5.0/24]}\n"
    )
    d = one(diagnose(text), "front_door.allow_from")
    assert d.severity is Severity.WARNING and "ACME" in d.message


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("front_door: {tls: sometimes}", "front_door.tls"),
        ("front_door: {tls: internal, allow_from: everyone}", "front_door.allow_from"),
        ("front_door: {tls: internal, max_upload_mb: 0}", "front_door.max_upload_mb"),
        ("front_door: {tls: acme, acme: {email: nobody}}", "front_door.acme.email"),
        (
            "front_door: {tls: acme, acme: {email: a@b.org, directory_ca: not a certificate}}",
            "front_door.acme.directory_ca",
        ),
        (
            "front_door: {tls: acme, acme: {email: a@b.org, directory: 'http://ca.test/dir'}}",
            "front_door.acme.directory",
        ),
    ],
)
def test_schema_errors_in_the_section_are_located(setting: str, path: str) -> None:
    d = one(diagnose(URLS + setting + "\n"), path)
    assert d.severity is Severity.ERROR and d.hint, d.as_dict()


@pytest.mark.parametrize(
    "name", ["CORS_ALLOW_ORIGIN", "WEBUI_SESSION_COOKIE_SECURE", "FORWARDED_ALLOW_IPS"]
)
def test_proxy_settings_are_owned(name: str) -> None:
    text = edit(
        INTERNAL,
        "url: https://one.fleet.test}",
        f"url: https://one.fleet.test, env: {{{name}: x}}}}",
    )
    d = one(diagnose(text), f"instances[0].env.{name}")
    assert d.severity is Severity.ERROR and "owned by owuibuild" in d.message


# -- the plan and what it generates ------------------------------------------------------------------


def user_files(r: Rendered, host: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in r.user_data(host)["write_files"]}


def env(r: Rendered, name: str) -> dict[str, str]:
    lines = r.text(f"instances/{name}/{name}.env").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.fixture
def internal(render_text: Callable[[str], Rendered]) -> Rendered:
    return render_text(INTERNAL)


def test_instances_publish_on_loopback_only_and_are_checked_there(internal: Rendered) -> None:
    plan: Any = internal.plan
    for inst in plan.instances:
        compose = yaml.safe_load(internal.text(f"instances/{inst.name}/compose.yaml"))
        (port,) = compose["services"]["openwebui"]["ports"]
        assert (port["host_ip"], port["published"]) == ("127.0.0.1", str(inst.port))
        assert health_url(inst) == f"http://127.0.0.1:{inst.port}/health"


def test_the_firewall_opens_80_and_443_and_no_instance_port(internal: Rendered) -> None:
    plan: Any = internal.plan
    for host in plan.docker_hosts:
        rules = {r.service: r for r in host.firewall}
        assert (rules["front-door-http"].port, rules["front-door-https"].port) == (80, 443)
        assert rules["front-door-https"].sources == (IPv4Network("10.0.5.0/24"),)
        assert not any(s.startswith("openwebui-") for s in rules)
    assert not any(r.service.startswith("front-door") for r in plan.shared.firewall)


def test_public_allow_from_opens_to_everyone(render_text: Callable[[str], Rendered]) -> None:
    r = render_text(URLS + "front_door: {tls: internal, allow_from: public}\n")
    rules = {x.service: x for x in r.plan.docker_hosts[0].firewall}  # type: ignore[attr-defined]
    assert rules["front-door-https"].sources == (IPv4Network("0.0.0.0/0"),)


def test_open_webui_settings_follow_the_url(internal: Rendered) -> None:
    plan: Any = internal.plan
    one_env, two_env = env(internal, "one"), env(internal, "two")
    assert one_env["WEBUI_URL"] == "https://one.fleet.test"
    assert one_env["CORS_ALLOW_ORIGIN"] == "https://one.fleet.test"
    # the origin is what browsers send: lower case, no path, no default port
    assert two_env["CORS_ALLOW_ORIGIN"] == "https://two.fleet.test"
    for e in (one_env, two_env):
        assert e["WEBUI_SESSION_COOKIE_SECURE"] == e["WEBUI_AUTH_COOKIE_SECURE"] == "true"
    one_plan = plan.instances[0]
    assert one_env["FORWARDED_ALLOW_IPS"] == str(one_plan.docker_subnet.network_address + 1)
    assert one_plan.proxy_address in one_plan.docker_subnet


def test_without_a_front_door_nothing_trusts_forwarded_headers(
    render_text: Callable[[str], Rendered],
) -> None:
    r = render_text(edit(URLS, "https://one.fleet.test", "http://one.fleet.test:3001"))
    one_env = env(r, "one")
    assert "FORWARDED_ALLOW_IPS" not in one_env
    assert one_env["CORS_ALLOW_ORIGIN"] == "http://one.fleet.test:3001"
    assert one_env["WEBUI_SESSION_COOKIE_SECURE"] == "false"  # plain HTTP: a Secure cookie is lost
    compose = yaml.safe_load(r.text("instances/one/compose.yaml"))
    assert compose["services"]["openwebui"]["ports"][0]["host_ip"] == "10.0.5.20"


def site_routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (server,) = config["apps"]["http"]["servers"].values()
    *sites, last = server["routes"]
    # The last route takes every other host name: 421, no instance.
    assert "match" not in last and last["handle"][0]["status_code"] == 421, last
    return {r["match"][0]["host"][0]: r for r in sites}


def handlers(route: dict[str, Any]) -> list[dict[str, Any]]:
    (sub,) = route["handle"]
    return [h for r in sub["routes"] for h in r["handle"]]


def test_caddy_serves_each_instance_by_its_host_name(internal: Rendered) -> None:
    files = user_files(internal, "web-b")
    config = json.loads(files[front_door.CONFIG]["content"])
    (server,) = config["apps"]["http"]["servers"].values()
    assert server["listen"] == ["10.0.5.21:443"]
    # The admin endpoint only on a socket in the unit's 0700 runtime directory, for its reload.
    assert config["admin"] == {
        "listen": "unix//run/owui-front-door/admin.sock",
        "config": {"persist": False},
    }
    unit = files[front_door.UNIT]["content"]
    assert "RuntimeDirectory=owui-front-door\nRuntimeDirectoryMode=0700\n" in unit
    assert (
        "ExecReload=/usr/bin/caddy reload --config /etc/owuibuild/front-door.json "
        "--address unix//run/owui-front-door/admin.sock --force\n"
    ) in unit
    assert config["storage"] == {"module": "file_system", "root": "/var/lib/owuibuild/caddy"}
    routes = site_routes(config)
    assert set(routes) == {"two.fleet.test"}
    assert routes["two.fleet.test"]["terminal"] is True
    steps = handlers(routes["two.fleet.test"])
    kinds = [h["handler"] for h in steps]
    assert kinds == ["headers", "static_response", "request_body", "reverse_proxy"]
    proxy = steps[-1]
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:3001"}]
    assert proxy["flush_interval"] == -1  # streamed answers stay streamed
    assert proxy["transport"]["read_timeout"] == "15m"
    assert steps[0]["response"]["set"]["Strict-Transport-Security"] == ["max-age=31536000"]
    assert steps[2]["max_size"] == 100 * 1024 * 1024
    assert steps[1]["status_code"] == 413
    # Redirects to HTTPS stay automatic; the fleet CA's certificate is loaded, none managed.
    assert server["automatic_https"] == {"skip_certificates": ["two.fleet.test"]}
    assert config["apps"]["tls"]["certificates"]["load_files"] == [
        {"certificate": front_door.CERT, "key": front_door.CADDY_KEY}
    ]


def test_the_413_route_matches_exactly_the_lengths_over_the_limit(
    render_text: Callable[[str], Rendered],
) -> None:
    r = render_text(URLS + "front_door: {tls: internal, max_upload_mb: 3}\n")
    config = json.loads(user_files(r, "web-a")[front_door.CONFIG]["content"])
    (route,) = site_routes(config).values()
    (sub,) = route["handle"]
    (match,) = sub["routes"][1]["match"]
    pattern = re.compile(match["header_regexp"]["Content-Length"]["pattern"])
    limit = 3 * 1024 * 1024
    for n in [0, 1, 99, limit - 1, limit, limit + 1, limit * 10, 10**15, 3145728, 3145729]:
        assert bool(pattern.match(str(n))) is (n > limit), n
    assert pattern.match("0" + str(limit + 1)) and not pattern.match("00" + str(limit))
    for n in range(0, 100_000, 7):
        assert bool(re.match(front_door.larger_than(50_000), str(n))) is (n > 50_000)


def test_the_shared_host_runs_both_caddy_units_with_one_masked_package_unit(
    render_example: Callable[[str], Rendered],
) -> None:
    r = render_example("homelab.yml")
    doc = r.user_data("homelab")
    paths = [f["path"] for f in doc["write_files"]]
    assert len(paths) == len(set(paths))
    assert "/etc/systemd/system/caddy.service" in paths
    assert {front_door.UNIT, "/etc/systemd/system/owui-ollama-tls.service"} <= set(paths)
    unit = next(f for f in doc["write_files"] if f["path"] == front_door.UNIT)["content"]
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    assert "RequiresMountsFor=/var/lib/owuibuild/caddy" in unit
    assert "User=caddy" in unit


def test_the_key_is_root_only_and_caddys_copy_is_made_at_boot(internal: Rendered) -> None:
    files = user_files(internal, "web-a")
    assert files[front_door.KEY]["permissions"] == "0600"
    assert files[front_door.KEY]["owner"] == "root:root"
    runcmd = internal.user_data("web-a")["runcmd"]
    assert ["install", "-o", "caddy", "-g", "caddy", "-m", "0600", front_door.KEY,
            front_door.CADDY_KEY] in runcmd  # fmt: skip
    assert ["install", "-d", "-o", "caddy", "-g", "caddy", "-m", "0700",
            front_door.STORAGE] in runcmd  # fmt: skip
    assert "caddy" in internal.user_data("web-a")["packages"]


def test_the_fleet_ca_certifies_each_front_door_for_its_host_names(internal: Rendered) -> None:
    from cryptography import x509

    tls: Any = internal.secrets.tls  # type: ignore[attr-defined]
    assert set(tls.front_doors) == {"web-a", "web-b"}
    files = user_files(internal, "web-b")
    cert = x509.load_pem_x509_certificate(files[front_door.CERT]["content"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["two.fleet.test"]
    ca = x509.load_pem_x509_certificate(tls.ca_cert.encode())
    cert.verify_directly_issued_by(ca)
    assert tls.front_doors["web-b"].key in tls.private_keys()


def test_front_door_certificates_are_kept_and_issued_again_when_names_change(
    tmp_path: Path,
) -> None:
    today = datetime.date(2026, 12, 1)
    first, changed, _ = pki.complete(None, "f", {}, today, {"web-a": ("a.fleet.test",)})
    assert changed and set(first.front_doors) == {"web-a"}
    path = tmp_path / "f.tls.secrets.yml"
    pki.write(path, first, "f.yml")
    stored, problems = pki.read(path, today)
    assert problems == [] and stored == first
    again, changed, notices = pki.complete(stored, "f", {}, today, {"web-a": ("a.fleet.test",)})
    assert not changed and again == first and notices == []
    renamed, changed, notices = pki.complete(
        stored, "f", {}, today, {"web-a": ("a.fleet.test", "b.fleet.test")}
    )
    assert changed and renamed.front_doors["web-a"] != first.front_doors["web-a"]
    assert renamed.front_doors["web-a"].names == ("a.fleet.test", "b.fleet.test")
    assert notices and "front door certificate for host web-a" in notices[0]


def test_acme_front_doors_name_their_ca_and_trust_a_private_directory(
    render_text: Callable[[str], Rendered],
) -> None:
    ca = pki.issue_ca("acme-test", datetime.date(2026, 12, 1)).cert
    block = "\n".join("      " + line for line in ca.strip().splitlines())
    text = URLS + (
        "front_door:\n  tls: acme\n  allow_from: public\n  acme:\n    email: ops@fleet.org\n"
        "    directory: https://ca.fleet.test:14000/dir\n    directory_ca: |\n" + block + "\n"
    )
    r = render_text(text)
    files = user_files(r, "web-a")
    config = json.loads(files[front_door.CONFIG]["content"])
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert policy["issuers"] == [
        {
            "module": "acme",
            "ca": "https://ca.fleet.test:14000/dir",
            "email": "ops@fleet.org",
            "trusted_roots_pem_files": [front_door.ACME_DIRECTORY_CA],
        }
    ]
    assert files[front_door.ACME_DIRECTORY_CA]["content"].strip() == ca.strip()
    assert front_door.CERT not in files and front_door.KEY not in files
    (server,) = config["apps"]["http"]["servers"].values()
    assert server["automatic_https"] == {}  # Caddy manages the certificates, and redirects
    tls: Any = r.secrets.tls  # type: ignore[attr-defined]
    assert not tls.front_doors  # nothing issued by the fleet CA


def test_status_asks_instances_through_the_front_door(internal: Rendered) -> None:
    plan: Any = internal.plan
    checks = status.plan_checks(
        plan,
        internal.secrets.values,  # type: ignore[attr-defined]
        Path("x.secrets.yml"),
        fleet_ca=internal.secrets.tls.ca_cert,  # type: ignore[attr-defined]
    )
    rows = {(c.service, c.instance): c for c in checks}
    for inst in plan.instances:
        assert rows[("openwebui", inst.name)].target == f"{inst.host.address}:443"
    no_ca = status.plan_checks(
        plan,
        internal.secrets.values,
        Path("x.secrets.yml"),
        fleet_ca=None,  # type: ignore[attr-defined]
    )
    row = next(c for c in no_ca if c.service == "openwebui")
    assert row.run(1.0).state.value != "ok"  # nothing dialled without the fleet CA


def test_packer_bakes_caddy_into_the_instance_host_image(internal: Rendered) -> None:
    script = internal.text("packer/scripts/instance-host-install.sh")
    assert re.search(r"\bcaddy\b", script)
    assert "front-door.key" not in script and "BEGIN PRIVATE KEY" not in script


def test_a_host_without_a_data_volume_would_lose_its_acme_state() -> None:
    text = edit(URLS, "{name: web-a, address: 10.0.5.20, memory_gb: 64, data_volume: {label: owui-data}}",
                "{name: web-a, address: 10.0.5.20, memory_gb: 64}")  # fmt: skip
    acme = "front_door: {tls: acme, acme: {email: ops@fleet.org}, allow_from: public}\n"
    (d,) = [d for d in diagnose(text + acme) if d.path == ("hosts", 0, "name")]
    assert "the front door's ACME account and certificates" in d.message
    (d,) = [
        d
        for d in diagnose(text + "front_door: {tls: internal}\n")
        if d.path == ("hosts", 0, "name")
    ]
    assert "ACME" not in d.message
