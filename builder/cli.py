"""The command line: the edge where diagnostics become text or JSON and exit codes.

Only click is imported at start-up; each command imports what it needs when it runs, so
`owuibuild --help` stays fast. Exit codes: 0 ok, 1 invalid input, 2 usage, 3 internal error.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

# name -> (module:function, short help). Commands are imported only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "bake": ("owuibuild.bake:bake", "Bake a golden image with Packer (init, validate, build)."),
    "init": ("owuibuild.commands:init", "Write a commented starter blueprint."),
    "validate": ("owuibuild.commands:validate", "Check a blueprint and list every problem."),
    "render": (
        "owuibuild.commands:render",
        "Compile a blueprint into seeds, bundles and templates.",
    ),
    "schema": ("owuibuild.commands:schema", "Print the blueprint JSON Schema."),
    "seed": ("owuibuild.commands:seed", "Pack a host's seed files into seed.iso (cidata)."),
    "status": ("owuibuild.status:status", "Probe every service of a running fleet; one table."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name][0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="owuibuild", prog_name="owuibuild")
def cli() -> None:
    """Compile one Open WebUI fleet blueprint into cloud-init seeds, per-instance bundles and
    Packer templates. Hosts are provisioned at first boot and replaced, never changed.

    \b
    Example:
      owuibuild init fleet.yml
      owuibuild validate fleet.yml
      owuibuild render fleet.yml -o out/fleet
    """


def fail(message: str, code: int = EXIT_INVALID, hint: str | None = None) -> NoReturn:
    click.echo(f"owuibuild: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)
    sys.exit(code)


def help_width() -> int:
    """The width click's help formatter would choose, found as shutil.get_terminal_size finds
    the terminal's: importing shutil (and the compression modules it imports) took a tenth of
    `owuibuild --help`."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return max(min(columns or 80, 80) - 2, 50)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(
            args=argv, prog_name="owuibuild", standalone_mode=True, terminal_width=help_width()
        )
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit:
        raise
    except BaseException as exc:  # the last line of defence: no traceback reaches a user
        fail(
            f"internal error: {type(exc).__name__}: {exc}",
            EXIT_INTERNAL,
            "this is a bug in owuibuild; please report it with the blueprint",
        )


if __name__ == "__main__":  # pragma: no cover
    main()
