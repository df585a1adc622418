"""The ``bake`` command: render, then run Packer on one golden image's templates.

This room runs external programs, so it owns the I/O the pure targets never do: it finds
``packer``, asks its version, stages the templates in a private temporary directory and runs
``packer init`` (Packer >= 1.7), ``validate`` and ``build`` as subprocesses with argv lists,
never a shell. Packer's output is streamed through, with one progress line per step.

Credentials never go on a command line: Packer reads them from ``PKR_VAR_<name>`` environment
variables or from var files; a var file that sets a sensitive variable must be mode 0600.
Exit codes, besides the CLI's: 4 Packer missing or unusable, 5 init failed, 6 validate
failed, 7 build failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from .cli import EXIT_INVALID, EXIT_USAGE, fail
from .commands import blueprint_argument, report, require_file
from .plan import Plan
from .targets import Artifact
from .targets.packer import (
    BUILDERS,
    IMAGES,
    Value,
    hcl_file,
    images,
    source_name,
    variables,
)

EXIT_NO_PACKER, EXIT_INIT, EXIT_VALIDATE, EXIT_BUILD = 4, 5, 6, 7

PLUGINS_FILE = "plugins.pkr.hcl"
BAKE_VARS_FILE = "owuibuild-bake.auto.pkrvars.hcl"  # loaded by Packer from the template dir
BUILD_USER = "owuibuild-build"
FIRST_WITH_PLUGINS = (1, 7, 0)
_VERSION = re.compile(r"Packer v(\d+)\.(\d+)\.(\d+)")


class BakeError(Exception):
    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


@dataclass
class Step:
    title: str
    argv: list[str]
    exit_code: int  # what bake exits with when this step fails
    failure: str


@dataclass
class Bake:
    """Everything one bake runs, decided before anything is run."""

    packer: str
    version: tuple[int, int, int] | None
    stage: Path
    steps: list[Step] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment
    notes: list[str] = field(default_factory=list)


def packer_version(packer: str) -> tuple[int, int, int]:
    try:
        proc = subprocess.run(
            [packer, "version"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, CHECKPOINT_DISABLE="1"),
        )
    except OSError as exc:
        raise BakeError(f"cannot run {packer}: {exc.strerror or exc}", EXIT_NO_PACKER) from None
    except subprocess.TimeoutExpired:
        raise BakeError(f"{packer} version did not answer", EXIT_NO_PACKER) from None
    match = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise BakeError(
            f"{packer} version did not print a Packer version "
            f"(exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[:200]!r})",
            EXIT_NO_PACKER,
            "is this HashiCorp Packer? pass its path with --packer PATH",
        )
    return (int(match[1]), int(match[2]), int(match[3]))


def find_packer(explicit: str | None) -> str | None:
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BakeError(f"--packer {explicit}: not an executable file", EXIT_NO_PACKER)
        return str(path.resolve())
    return shutil.which("packer")


def check_var_file(path: Path, sensitive: frozenset[str]) -> None:
    """A var file must exist; one that sets a sensitive variable must be private (0600)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise BakeError(f"--var-file {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not stat.S_ISREG(st.st_mode):
        raise BakeError(f"--var-file {path}: not a regular file", EXIT_USAGE)
    if not st.st_mode & 0o077:
        return
    try:
        text = path.read_text("utf-8")
        if path.name.endswith(".json"):
            values = json.loads(text)
        else:
            import hcl2

            values = hcl2.loads(text)
    except Exception:  # Packer reports a broken var file itself, with a better message
        return
    leaked = sorted(set(values) & sensitive) if isinstance(values, dict) else []
    if leaked:
        raise BakeError(
            f"--var-file {path} sets {', '.join(leaked)} but others can read it "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            EXIT_USAGE,
            f"chmod 600 {path}, or pass credentials as PKR_VAR_<name> environment variables",
        )


def build_seed(public_key: str) -> dict[str, bytes]:
    """The build-time NoCloud seed: only the throwaway build user, which seal.sh removes."""
    user_data = {
        "users": [
            {
                "name": BUILD_USER,
                "shell": "/bin/sh",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [public_key],
            }
        ],
        "ssh_pwauth": False,
    }
    meta_data = {
        "instance-id": f"owuibuild-bake-{uuid.uuid4().hex[:12]}",
        "local-hostname": "owuibuild-bake",
    }
    return {
        "user-data": ("#cloud-config\n" + yaml.safe_dump(user_data, sort_keys=False)).encode(),
        "meta-data": yaml.safe_dump(meta_data, sort_keys=False).encode(),
    }


def make_build_key(directory: Path) -> tuple[Path, str]:
    key = directory / "build_ed25519"
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "owuibuild-bake", "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BakeError(
            f"cannot make the build key with ssh-keygen: {exc}",
            EXIT_NO_PACKER,
            "install openssh-client",
        ) from None
    return key, key.with_suffix(".pub").read_text().strip()


def stage_templates(
    stage: Path, artifacts: Sequence[Artifact], image: str, with_plugins: bool
) -> None:
    """Copy what one image needs (variables, its build file, scripts) into ``stage``."""
    wanted = {"packer/variables.pkr.hcl", f"packer/{image}.pkr.hcl"}
    if with_plugins:
        wanted.add(f"packer/{PLUGINS_FILE}")
    for a in artifacts:
        if a.path in wanted or a.path.startswith("packer/scripts/"):
            dest = stage / a.path.removeprefix("packer/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(a.data)


def plan_bake(
    plan: Plan,
    artifacts: Sequence[Artifact],
    image: str,
    builders: Sequence[str],
    var_files: Sequence[Path],
    packer: str,
    version: tuple[int, int, int] | None,
    stage: Path,
    *,
    dry_run: bool,
) -> Bake:
    bake = Bake(packer=packer, version=version, stage=stage)
    with_plugins = version is None or version >= FIRST_WITH_PLUGINS
    if not with_plugins:
        assert version is not None
        bake.notes.append(
            f"Packer {'.'.join(map(str, version))} predates required_plugins: building "
            f"without {PLUGINS_FILE}, with the builders built into this Packer"
        )
    declared = variables(plan)
    sensitive = frozenset(v.name for v in declared if v.sensitive)
    for f in var_files:
        check_var_file(f, sensitive)

    if not dry_run:
        stage_templates(stage, artifacts, image, with_plugins)
        bake_vars: list[tuple[str, Value]] = []
        if "qemu" in plan.fleet.images.builders:
            seed_dir = stage / "build-seed"
            seed_dir.mkdir(mode=0o700)
            key, public_key = make_build_key(stage)
            for name, data in build_seed(public_key).items():
                (seed_dir / name).write_bytes(data)
            bake_vars += [
                ("qemu_build_seed_dir", str(seed_dir)),
                ("qemu_ssh_private_key_file", str(key)),
                ("qemu_ssh_username", BUILD_USER),
            ]
        header = "# Written by owuibuild bake for this run only.\n"
        fd = os.open(stage / BAKE_VARS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(hcl_file(header, bake_vars))

    # Packer 1.6 insists that every variable a source uses is set, even for sources that
    # -only leaves out: give the other builders' required inputs an empty value, through
    # the environment (the lowest precedence, so a var file still wins).
    for v in declared:
        if v.required and v.builder is not None and v.builder not in builders:
            key_name = f"PKR_VAR_{v.name}"
            if key_name not in os.environ:
                bake.env[key_name] = ""
    bake.env["CHECKPOINT_DISABLE"] = "1"  # no call home to HashiCorp's version checkpoint

    only = "-only=" + ",".join(source_name(image, b) for b in builders)
    files = [f"-var-file={f.resolve()}" for f in var_files]
    if with_plugins:
        bake.steps.append(
            Step(
                "packer init",
                [packer, "init", str(stage)],
                EXIT_INIT,
                "packer init could not install the pinned plugins",
            )
        )
    bake.steps.append(
        Step(
            "packer validate",
            [packer, "validate", only, *files, str(stage)],
            EXIT_VALIDATE,
            "packer validate rejected the templates or inputs",
        )
    )
    bake.steps.append(
        Step(
            "packer build",
            [packer, "build", "-color=false", only, *files, str(stage)],
            EXIT_BUILD,
            "packer build failed",
        )
    )
    return bake


def run_step(step: Step, env: Mapping[str, str]) -> int:
    """Run one step, streaming its output; returns its exit status."""
    proc = subprocess.Popen(
        step.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # Packer got the same SIGINT and cleans up its VM
        raise


@click.command()
@blueprint_argument
@click.option(
    "--image", type=click.Choice(IMAGES), required=True, help="Which golden image to bake."
)
@click.option(
    "--builder",
    "builder_names",
    type=click.Choice(BUILDERS),
    multiple=True,
    help="Builder to run (repeatable). Default: every builder the blueprint selects.",
)
@click.option(
    "--var-file",
    "var_files",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Packer var file with the site's inputs (repeatable). One that sets a "
    "credential must be mode 0600.",
)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Render output directory. Default: out/<fleet name>.",
)
@click.option("--dry-run", is_flag=True, help="Render nothing, run nothing: print the steps.")
@click.option(
    "--packer", "packer_path", default=None, help="The packer executable. Default: packer on PATH."
)
def bake(
    blueprint: Path,
    image: str,
    builder_names: tuple[str, ...],
    var_files: tuple[Path, ...],
    output: Path | None,
    dry_run: bool,
    packer_path: str | None,
) -> None:
    """Render BLUEPRINT, then bake one golden image with Packer: packer init (Packer >= 1.7),
    validate and build, with Packer's output streamed.

    Credentials (e.g. proxmox_password) are read by Packer from PKR_VAR_<name> environment
    variables or from a var file of mode 0600; they never appear on a command line.
    The qemu builder gets a throwaway build user and key through a build-time NoCloud seed;
    the image is sealed at the end (cloud-init clean, no SSH host keys, no build user).

    \b
    Example:
      owuibuild bake fleet.yml --image shared --var-file site.pkrvars.hcl
      PKR_VAR_proxmox_password=... owuibuild bake fleet.yml --image instance-host --builder proxmox
    """
    from .pipeline import compile_blueprint
    from .writer import WriteError, write

    require_file(blueprint)
    compiled = compile_blueprint(blueprint, write_secrets=not dry_run)
    lines = compiled.checked.source.lines if compiled.checked.source else []
    report(compiled.diagnostics, "text", lines, str(blueprint))
    if not compiled.ok or compiled.plan is None:
        sys.exit(EXIT_INVALID)
    plan = compiled.plan
    selected = plan.fleet.images.builders
    builders = list(builder_names) or list(selected)
    unknown = [b for b in builders if b not in selected]
    if unknown:
        fail(
            f"--builder {unknown[0]}: the blueprint's images.builders are {', '.join(selected)}",
            EXIT_USAGE,
            f"add {unknown[0]} to images.builders and render again",
        )
    if image not in [i.name for i in images(plan)]:
        fail(f"this fleet has no {image} image", EXIT_USAGE)

    out_dir = output if output is not None else Path("out") / plan.fleet.name
    stage = (
        Path(tempfile.mkdtemp(prefix="owuibuild-bake-")) if not dry_run else Path("<staging dir>")
    )
    try:
        packer = find_packer(packer_path)
        version = packer_version(packer) if packer else None
        if packer is None and not dry_run:
            raise BakeError(
                "packer not found on PATH",
                EXIT_NO_PACKER,
                "install HashiCorp Packer, or pass its path with --packer PATH",
            )
        if not dry_run:
            try:
                write(out_dir, compiled.artifacts)
            except WriteError as exc:
                raise BakeError(str(exc), EXIT_INVALID, exc.hint) from None
        job = plan_bake(
            plan,
            compiled.artifacts,
            image,
            builders,
            list(var_files),
            packer or "packer",
            version,
            stage,
            dry_run=dry_run,
        )
        total = len(job.steps)
        where = "would be rendered" if dry_run else "rendered"
        click.echo(
            f"owuibuild: baking the {image} image of {plan.fleet.name} with "
            f"{', '.join(builders)}; templates {where} to {out_dir / 'packer'}"
        )
        if packer is None:
            click.echo("owuibuild: packer not found on PATH; showing the steps for Packer >= 1.7")
        for note in job.notes:
            click.echo(f"owuibuild: note: {note}")
        if dry_run:
            names = sorted(k for k in job.env if k.startswith("PKR_VAR_"))
            if names:
                click.echo(
                    f"owuibuild: environment: {', '.join(n + '=' for n in names)} "
                    "(inputs of builders not being run)"
                )
            for n, step in enumerate(job.steps, 1):
                click.echo(f"owuibuild: [{n}/{total}] would run: {' '.join(step.argv)}")
            return
        for n, step in enumerate(job.steps, 1):
            click.echo(f"owuibuild: [{n}/{total}] {step.title}", err=False)
            status = run_step(step, job.env)
            if status != 0:
                raise BakeError(
                    f"{step.failure} (exit {status}); see Packer's output above", step.exit_code
                )
        click.echo(f"owuibuild: baked the {image} image with {', '.join(builders)}")
    except BakeError as exc:
        fail(str(exc), exc.code, exc.hint)
    finally:
        if not dry_run:
            shutil.rmtree(stage, ignore_errors=True)


__all__ = ["EXIT_BUILD", "EXIT_INIT", "EXIT_NO_PACKER", "EXIT_VALIDATE", "bake"]
