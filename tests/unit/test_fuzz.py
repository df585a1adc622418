"""Hypothesis: random documents, random bytes and mutated example blueprints thrown at the CLI.

Whatever comes in: exit 0 or 1, never a traceback; render fails exactly where validate does;
and a failed render leaves no partial output (the output directory is absent, or unchanged
byte for byte).
Under CI (CI=true) every test runs at least 500 examples; locally fewer.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from owuibuild.cli import cli
from owuibuild.validate import schema

pytestmark = pytest.mark.unit

settings.register_profile(
    "owuibuild-ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "owuibuild-dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(
    "owuibuild-ci" if os.environ.get("CI") == "true" else "owuibuild-dev"
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p.name for p in (REPO / "blueprints").glob("*.yml") if not p.name.endswith(".secrets.yml")
)


def _schema_keys() -> list[str]:
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(k for k in node.get("properties", {}) if isinstance(k, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    return sorted(keys)


KEYS = _schema_keys()
HOSTILE = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "${HOME}",
    "$(reboot)",
    "`id`",
    "; rm -rf /",
    "\n",
    "a\nb: c",
    "{{ 7*7 }}",
    "{% raw %}",
    "%(x)s",
    "../../../etc/passwd",
    "\u202e",
    "\x00",
    "\x1b[31m",
    "ü",
    "😀",
    "x" * 5000,
    "-1",
    "0x10",
    "1e309",
    "null",
    "true",
    "*a",
    "&a",
    "!!python/object",
    "<script>",
    "' OR 1=1 --",
    "DROP TABLE users;",
    "\t",
    "#",
    "- ",
    ": ",
    "web-a",
    "10.0.5.24",
    "3001",
    "owuibuild/v1",
    "debian-12",
    "per-instance",
    "DATABASE_URL",
    "0.0.0.0/0",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(HOSTILE), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)
YAML_ALPHABET = st.sampled_from(
    [*"abcdefxyz0123456789 \n\t-:,[]{}&*!|>'\"#%@`?.~/\\", "\u00e9", "\u2028", "\ufeff", "\x1b"]
)
yaml_texts = st.one_of(
    st.text(alphabet=YAML_ALPHABET, max_size=200),
    st.lists(
        st.tuples(
            st.sampled_from(KEYS), st.text(alphabet=YAML_ALPHABET, max_size=20), st.integers(0, 3)
        ),
        max_size=15,
    ).map(lambda rows: "".join(f"{'  ' * depth}{k}: {v}\n" for k, v, depth in rows)),
)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]] | None:
    if not root.exists():
        return None
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_clean(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    assert "Traceback" not in result.output


def throw(data: bytes, out: Path | None = None) -> tuple[int, int]:
    """validate and render one blueprint; check exit codes and that no partial output exists."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bp.yml"
        path.write_bytes(data)
        result = run("validate", str(path))
        assert_clean(result)
        valid = result.exit_code == 0
        target = out if out is not None else Path(tmp) / "out"
        before = snapshot(target)
        rendered = run("render", str(path), "-o", str(target))
        assert_clean(rendered)
        if rendered.exit_code == 0:
            assert valid, "render succeeded on a blueprint validate refused"
            assert (target / "manifest.json").is_file()
            assert not any(p.name.startswith(f".{target.name}.") for p in target.parent.iterdir())
        else:
            assert snapshot(target) == before
            leftovers = [
                p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")
            ]
            assert leftovers == []
        return result.exit_code, rendered.exit_code


# Each test then checks that validate and render judge a blueprint alike: render fails exactly
# where validate does (throw() has already checked that neither crashed nor left partial output).
AGREE = "validate exited {} but render exited {}"


@settings(PROFILE)
@given(text=yaml_texts)
def test_random_yaml_text(text: str) -> None:
    validated, rendered = throw(text.encode("utf-8"))
    assert validated == rendered, AGREE.format(validated, rendered)


@settings(PROFILE)
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    validated, rendered = throw(data)
    assert validated == rendered, AGREE.format(validated, rendered)


@settings(PROFILE)
@given(doc=documents)
def test_random_documents(doc: Any) -> None:
    validated, rendered = throw(yaml.safe_dump(doc, allow_unicode=True).encode("utf-8"))
    assert validated == rendered, AGREE.format(validated, rendered)


# -- mutated examples -------------------------------------------------------------------------------


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key in list(node):
            yield from paths(node[key], (*prefix, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from paths(item, (*prefix, i))


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    return get(doc, path[:-1])


def mutate(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        candidates = [p for p in paths(doc) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = parent_of(doc, path)
        op = draw(st.sampled_from(["drop", "retype", "hostile", "duplicate", "add-key"]))
        if op == "drop":
            del parent[path[-1]]
        elif op == "retype":
            parent[path[-1]] = draw(documents)
        elif op == "hostile":
            parent[path[-1]] = draw(st.sampled_from(HOSTILE))
        elif op == "duplicate":
            lists = [p for p in candidates if isinstance(get(doc, p), list) and get(doc, p)]
            if lists:
                target = get(doc, draw(st.sampled_from(lists)))
                target.append(copy.deepcopy(draw(st.sampled_from(target))))
        else:
            holder = parent if isinstance(parent, dict) else doc
            holder[draw(keys)] = draw(scalars)
    return doc


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[str, bytes]:
    example = draw(st.sampled_from(EXAMPLES))
    text = (REPO / "blueprints" / example).read_text()
    doc = mutate(draw, yaml.safe_load(text))
    out = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    lines = out.splitlines(keepends=True)
    line_op = draw(st.sampled_from(["none", "none", "duplicate-line", "drop-line"]))
    if lines and line_op != "none":
        n = draw(st.integers(0, len(lines) - 1))
        lines = (
            lines[: n + 1] + lines[n:]
            if line_op == "duplicate-line"
            else lines[:n] + lines[n + 1 :]
        )
    return example, "".join(lines).encode("utf-8")


@pytest.fixture(scope="module")
def previous_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real earlier render of every example, which failed renders must leave untouched."""
    root = tmp_path_factory.mktemp("previous")
    outs = {}
    for example in EXAMPLES:
        blueprint = root / example
        shutil.copy(REPO / "blueprints" / example, blueprint)
        out = root / f"out-{example.removesuffix('.yml')}"
        assert run("render", str(blueprint), "-o", str(out)).exit_code == 0
        outs[example] = out
    return outs


@settings(
    PROFILE,
    suppress_health_check=[*PROFILE.suppress_health_check, HealthCheck.function_scoped_fixture],
)
@given(case=mutated_examples())
def test_mutated_examples(case: tuple[str, bytes], previous_outputs: dict[str, Path]) -> None:
    example, data = case
    validated, rendered = throw(data, out=previous_outputs[example])
    assert validated == rendered, AGREE.format(validated, rendered)
