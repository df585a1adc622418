"""The blueprint schema: valid 2020-12, described, closed, and matched by every example."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from owuibuild.validate import schema, schema_text

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas" / "blueprint.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
EXAMPLES = sorted(
    p for p in (REPO / "blueprints").glob("*.yml") if not p.name.endswith(".secrets.yml")
)
MODELINE = "# yaml-language-server: $schema="


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return {**SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]], **node}
    return node


def properties(node: dict[str, Any], path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema, with its path, walking into objects, items and $defs."""
    node = resolve(node)
    for name, prop in node.get("properties", {}).items():
        yield f"{path}.{name}", prop
        yield from properties(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from properties(node["items"], f"{path}[]")


def objects(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from objects(value, f"{path}/{i}")


def test_schema_is_valid_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_packaged_schema_is_the_schema_file() -> None:
    assert schema_text() == SCHEMA_FILE.read_text()
    assert schema() == SCHEMA


def test_every_property_has_a_description() -> None:
    found = list(properties(SCHEMA))
    assert len(found) > 40
    assert [path for path, prop in found if not resolve(prop).get("description")] == []


def test_every_object_is_closed() -> None:
    found = list(objects(SCHEMA))
    assert len(found) > 10
    for path, node in found:
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        else:  # a free-form map (env): its names and values are constrained instead
            assert "propertyNames" in node and isinstance(node.get("additionalProperties"), dict), (
                path
            )


def test_examples_and_defaults_validate_against_their_property() -> None:
    checked = 0
    for path, prop in properties(SCHEMA):
        sub = {**resolve(prop), "$defs": SCHEMA["$defs"]}
        validator = Draft202012Validator(sub)
        for value in [*sub.get("examples", []), *([sub["default"]] if "default" in sub else [])]:
            errors = [e.message for e in validator.iter_errors(value)]
            assert errors == [], (path, value)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_blueprints_validate_against_the_schema(example: Path) -> None:
    data = yaml.safe_load(example.read_text())
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(data)]
    assert errors == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_blueprints_have_a_modeline_to_the_schema(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    assert first.startswith(MODELINE)
    target = (example.parent / first[len(MODELINE) :]).resolve()
    assert target == SCHEMA_FILE.resolve()


def test_the_expected_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"seed-example.yml", "homelab.yml", "multi-host.yml"}


def test_seed_example_is_the_starter_but_its_modeline() -> None:
    starter = (REPO / "builder" / "templates" / "starter.yml").read_text().splitlines(keepends=True)
    example = (REPO / "blueprints" / "seed-example.yml").read_text().splitlines(keepends=True)
    assert starter[0].startswith(MODELINE) and example[0].startswith(MODELINE)
    assert starter[1:] == example[1:]


def test_the_seed_topology() -> None:
    data = yaml.safe_load((REPO / "blueprints" / "seed-example.yml").read_text())
    assert data["shared"]["host"]["address"] == "10.0.5.24"
    assert [(i["name"], i["port"]) for i in data["instances"]] == [
        (f"webui{n}", 3000 + n) for n in range(1, 6)
    ]
