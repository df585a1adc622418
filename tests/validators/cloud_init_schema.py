"""cloud-init's own schema check, for whichever cloud-init a release ships, and the examples
that each release's check covers.

``CHECK`` is one program for every cloud-init: it reads {name: user-data text} as JSON on
stdin and prints the cloud-init version and {name: [problem, ...]}: strict schema errors,
deprecations (strict mode raises on them from 25.1; a booted host would log them as
warnings) and top-level keys the schema does not know (``cloud-init schema`` alone ignores
those before 25.1). ``run_check`` runs it with a given interpreter: Debian 12's system python3
for cloud-init 22.4, or trixie's python3 under chroot for 25.1.

``examples_on(distro)`` picks the examples to check for a release: those whose ``os.distro``
is that release, or, while there are none, a variant of every example with the distro swapped
in (when the blueprint schema accepts it), or else the examples as they are.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml
from conftest import BLUEPRINTS, EXAMPLES, Rendered, compile_path
from owuibuild.targets.hosts import unpack_user_data

CHECK = r"""
import json, sys, yaml
import cloudinit.version
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
schema = get_schema()
known = set(schema.get("properties", {}))
for part in schema.get("allOf", []):
    if "$ref" in part:
        part = schema["$defs"][part["$ref"].rsplit("/", 1)[-1]]
    known |= set(part.get("properties", {}))
out = {}
for name, text in json.load(sys.stdin).items():
    cfg = yaml.safe_load(text)
    problems = sorted("unknown top-level key: " + k for k in cfg if k not in known)
    try:
        validate_cloudconfig_schema(cfg, schema, strict=True, log_details=False)
    except SchemaValidationError as exc:
        problems += [f"{p}: {m}" for p, m in exc.schema_errors]
        problems += [f"deprecated: {p}: {m}" for p, m in getattr(exc, "schema_deprecations", ())]
    out[name] = problems
print(json.dumps({"version": cloudinit.version.version_string(), "problems": out}))
"""


def run_check(python: Sequence[str], documents: dict[str, str]) -> tuple[str, dict[str, list[str]]]:
    """(cloud-init version, problems per document) from ``python -c CHECK``."""
    result = subprocess.run(
        [*python, "-c", CHECK],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    problems: dict[str, list[str]] = answer["problems"]
    return str(answer["version"]), problems


def user_data_texts(rendered: Rendered) -> Iterator[tuple[str, str]]:
    """(host, user-data text) of every host, gunzipped where the platform limit gzipped it."""
    for path, data in rendered.files.items():
        if path.endswith("/user-data"):
            yield path.split("/")[1], unpack_user_data(data).decode()


def distro_of(rendered: Rendered) -> str:
    distro: str = rendered.plan.fleet.os.distro  # type: ignore[attr-defined]
    return distro


def variant(name: str, distro: str, directory: Path) -> Rendered | None:
    """Example ``name`` with os.distro set to ``distro``; None when the schema refuses it."""
    from owuibuild.pipeline import compile_blueprint

    doc = yaml.safe_load((BLUEPRINTS / name).read_text())
    doc["os"] = {**(doc.get("os") or {}), "distro": distro}
    path = directory / f"{distro}-{name}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if not compile_blueprint(path, seed_iso=False).ok:
        return None
    return compile_path(path)


def examples_on(
    distro: str, render_example: Callable[[str], Rendered], directory: Path
) -> tuple[str, dict[str, Rendered]]:
    """(how they were chosen, {case: rendered}) for checking ``distro``'s cloud-init."""
    examples = {name: render_example(name) for name in EXAMPLES}
    chosen = {n: r for n, r in examples.items() if distro_of(r) == distro}
    if chosen:
        return f"{distro} examples", chosen
    variants = {name: variant(name, distro, directory) for name in EXAMPLES}
    if all(v is not None for v in variants.values()):
        return f"{distro} variants", {f"{n} ({distro})": v for n, v in variants.items() if v}
    return f"examples as they are (no {distro} in the schema)", examples
