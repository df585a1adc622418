"""The core commands: init, validate, render, schema.

Each command turns pipeline results into output and an exit code; none of them computes
anything about the fleet itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from .cli import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, EXIT_USAGE, fail
from .diagnostics import Diagnostic, format_json, format_text

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How to print diagnostics: text for people, json for machines.",
)
STRICT = click.option("--strict", is_flag=True, help="Treat warnings as errors.")


def blueprint_argument(func: click.decorators.FC) -> click.decorators.FC:
    return click.argument("blueprint", type=click.Path(path_type=Path))(func)


def require_file(path: Path, fmt: str = "text") -> None:
    """A missing path or a directory is a usage error: one line (or JSON), exit 2."""
    problem, hint = None, None
    if path.is_dir():
        problem = "is a directory, not a blueprint file"
    elif not path.exists():
        problem, hint = "no such file", "run 'owuibuild init' to write a starter"
    if problem is None:
        return
    if fmt == "json":
        from .diagnostics import error

        click.echo(format_json([error((), problem, hint).located(str(path), None, None)]))
        sys.exit(EXIT_USAGE)
    fail(f"{path}: {problem}", EXIT_USAGE, hint)


def report(
    diagnostics: Sequence[Diagnostic],
    fmt: str,
    lines: Sequence[str],
    source_file: str | None = None,
    **extra: object,
) -> None:
    """Print diagnostics; source lines (of ``source_file``, when given) illustrate them."""
    if fmt == "json":
        click.echo(format_json(diagnostics, **extra))
    elif diagnostics:
        click.echo(format_text(diagnostics, lines, source_file), err=True)


@click.command()
@blueprint_argument
@FORMAT
@STRICT
def validate(blueprint: Path, fmt: str, strict: bool) -> None:
    """Check BLUEPRINT against the schema and the semantic rules, and list every problem at
    once as file:line:col with a hint. When the secrets file beside it exists
    (<blueprint>.secrets.yml), it is checked too, read-only. Nothing is written.

    \b
    Example:
      owuibuild validate blueprints/seed-example.yml
      owuibuild validate fleet.yml --format json --strict
    """
    from .allocation import allocate
    from .pipeline import check
    from .secrets import open_store, secrets_path

    require_file(blueprint, fmt)
    checked = check(blueprint, strict=strict)
    lines = checked.source.lines if checked.source else []
    stored = open_store(secrets_path(blueprint))  # what render would refuse
    secret_problems = list(stored.diagnostics)
    if (
        checked.ok
        and checked.fleet is not None
        and checked.source is not None
        and not secret_problems
    ):
        # A blueprint setting that contradicts what the store's records hold.
        _, held = allocate(checked.fleet, stored.allocations)
        secret_problems += [checked.source.locate(d) for d in held]
    diagnostics = [*checked.diagnostics, *secret_problems]
    report(diagnostics, fmt, lines, str(blueprint))
    if not checked.ok or secret_problems:
        sys.exit(EXIT_INVALID)
    if fmt == "text" and checked.fleet is not None:
        f = checked.fleet
        click.echo(f"{blueprint}: valid ({len(f.instances)} instances on {len(f.all_hosts)} hosts)")


@click.command()
@blueprint_argument
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory. Default: out/<fleet name>. It is replaced as a whole.",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Write nothing; exit 1 and list the files that would change.",
)
@click.option(
    "--seed-iso/--no-seed-iso",
    default=True,
    show_default=True,
    help="Also write hosts/<host>/seed.iso (a NoCloud cidata volume) for every host.",
)
@FORMAT
@STRICT
def render(
    blueprint: Path, output: Path | None, check_only: bool, seed_iso: bool, fmt: str, strict: bool
) -> None:
    """Compile BLUEPRINT into OUTPUT: seeds for every host, a bundle for every instance, Packer
    templates, a runbook and manifest.json.

    Secrets are generated on the first render into <blueprint>.secrets.yml, and the fleet CA
    with a certificate for each service host into <blueprint>.tls.secrets.yml (both mode
    0600); both are reused afterwards, so the same blueprint and secrets always give
    byte-identical output. A certificate within 30 days of its end is issued again, and
    render says so. The secrets file also records, not as secrets, each instance's Redis port,
    Docker network and connection share by name, so that adding or removing an instance moves
    no other; a removed instance's record keeps its slot from newcomers.
    Each host's seed carries a generation, signed with the fleet's key; it goes up when the
    seed changes, and render says for each such host whether the change can be re-applied to
    the running host or needs a host replacement (and what makes it one).
    The output directory is swapped in atomically: a failed render leaves it untouched.

    \b
    Example:
      owuibuild render blueprints/seed-example.yml
      owuibuild render fleet.yml -o /srv/fleet --check
    """
    from .pipeline import compile_blueprint
    from .writer import WriteError, check_target, diff, write

    require_file(blueprint, fmt)
    compiled = compile_blueprint(
        blueprint, strict=strict, write_secrets=not check_only, seed_iso=seed_iso
    )
    source = compiled.checked.source
    lines = source.lines if source else []
    shown = str(blueprint)
    if fmt == "text":
        for notice in compiled.notices:
            click.echo(f"{shown}: {notice}", err=True)
    if not compiled.ok or compiled.plan is None:
        report(compiled.diagnostics, fmt, lines, shown)
        sys.exit(EXIT_INVALID)
    out_dir = output if output is not None else Path("out") / compiled.plan.fleet.name
    seeds = [c.as_dict() for c in compiled.seed_changes]
    if check_only:
        try:
            check_target(out_dir)
        except WriteError as exc:
            fail(str(exc), EXIT_INVALID, exc.hint)
        changes = diff(out_dir, compiled.artifacts)
        if compiled.secrets_changed:
            report(compiled.diagnostics, fmt, lines, shown, changes=[], secrets_missing=True)
            if fmt == "text":
                click.echo(
                    "the secrets or CA file lacks secrets or certificates; "
                    "render without --check first",
                    err=True,
                )
            sys.exit(EXIT_INVALID)
        report(
            compiled.diagnostics,
            fmt,
            lines,
            shown,
            changes=[{"path": c.path, "change": c.kind} for c in changes],
            seeds=seeds,
        )
        if fmt == "text":
            for c in changes:
                click.echo(f"{c.kind:>8}  {out_dir / c.path}")
            for seed_change in compiled.seed_changes:
                click.echo(seed_change.describe())
            if not changes:
                click.echo(f"{out_dir}: up to date")
        sys.exit(EXIT_INVALID if changes else EXIT_OK)
    try:
        check_target(out_dir)
        write(out_dir, compiled.artifacts)
    except WriteError as exc:
        fail(str(exc), EXIT_INVALID, exc.hint)
    except OSError as exc:
        fail(f"cannot write {out_dir}: {exc.strerror or exc}", EXIT_INVALID)
    report(
        compiled.diagnostics,
        fmt,
        lines,
        shown,
        output=str(out_dir),
        files=[a.path for a in compiled.artifacts],
        seeds=seeds,
    )
    if fmt == "text":
        note = " (new secrets were added to the secrets files)" if compiled.secrets_changed else ""
        click.echo(f"rendered {len(compiled.artifacts)} files to {out_dir}{note}")
        for seed_change in compiled.seed_changes:
            click.echo(seed_change.describe())


@click.command()
@click.argument("path", type=click.Path(path_type=Path), default=Path("blueprint.yml"))
def init(path: Path) -> None:
    """Write a commented starter blueprint to PATH (default blueprint.yml): the seed's own
    example of one shared server and five instances. An existing file is never overwritten.

    \b
    Example:
      owuibuild init fleet.yml && owuibuild validate fleet.yml
    """
    from importlib import resources

    starter = resources.files("owuibuild").joinpath("templates/starter.yml").read_bytes()
    try:
        with path.open("xb") as fh:
            fh.write(starter)
    except FileExistsError:
        fail(
            f"{path}: already exists; not overwriting it",
            EXIT_USAGE,
            "choose another path or remove the file",
        )
    except OSError as exc:
        fail(f"{path}: cannot write: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"wrote {path}; edit it, then run: owuibuild render {path}")


@click.command()
@click.argument("host_dir", type=click.Path(path_type=Path, file_okay=False))
def seed(host_dir: Path) -> None:
    """Pack HOST_DIR's user-data, meta-data and network-config (and the signed seed manifest,
    owuibuild-seed.json and owuibuild-seed.sig, when present) into HOST_DIR/seed.iso: an
    ISO 9660 volume labelled cidata for cloud-init's NoCloud datasource, written with mode
    0600 because it carries user-data. The same files always give the same bytes.

    \b
    Example:
      owuibuild seed out/acme-ai/hosts/ai-shared
    """
    import os

    from .seed_iso import make_seed_iso
    from .seed_manifest import MANIFEST, SIGNATURE

    files: dict[str, bytes] = {}
    for name in ("user-data", "meta-data", "network-config", MANIFEST, SIGNATURE):
        path = host_dir / name
        if path.is_file():
            files[name] = path.read_bytes()
        elif name in ("user-data", "meta-data"):
            fail(f"{path}: missing; a NoCloud seed needs user-data and meta-data", EXIT_USAGE)
    target = host_dir / "seed.iso"
    tmp = host_dir / ".seed.iso.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # A temporary file left by an earlier, killed run keeps its mode through O_TRUNC.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(make_seed_iso(files))
    os.replace(tmp, target)
    click.echo(f"wrote {target}")


@click.command()
def schema() -> None:
    """Print the blueprint JSON Schema (draft 2020-12), for editors and CI.

    \b
    Example:
      owuibuild schema > blueprint.schema.json
    """
    from .validate import schema_text

    click.echo(schema_text(), nl=False)


__all__ = ["EXIT_INTERNAL", "init", "render", "schema", "seed", "validate"]
