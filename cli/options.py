"""Global options that work before or after the command, as git and DVC users type them.

``deltastore --home D -q add base m dir`` and ``deltastore add base m dir --home D -q`` mean the
same. The group callback takes the options before the command; every command is built with
:class:`GlobalOptionsCommand`, which adds the same options to the command itself and, when one is
given there, applies it over the group's value before the command runs. ``--json`` before the
command turns on the command's own ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import typer
from typer._click.core import ParameterSource
from typer.core import TyperCommand

HELP_HOME = "Store home (default: DELTASTORE_HOME, else ~/.deltastore)."
HELP_QUIET = "Print nothing but errors and requested data."
HELP_DB = "Catalog URL (default: the home's config, DELTASTORE_DB_URL, else SQLite in the home)."
HELP_OBJECTS = "Objects URL, any fsspec URL (default: the home's config, DELTASTORE_OBJECTS_URL, else the home)."


@dataclass
class State:
    home: Optional[str] = None
    quiet: bool = False
    db_url: Optional[str] = None
    objects_url: Optional[str] = None
    json: bool = False


state = State()


def _template(
    home: Optional[str] = typer.Option(None, "--home", help=HELP_HOME),
    quiet: bool = typer.Option(False, "-q", "--quiet", help=HELP_QUIET),
    db_url: Optional[str] = typer.Option(None, "--db-url", help=HELP_DB),
    objects_url: Optional[str] = typer.Option(None, "--objects-url", help=HELP_OBJECTS),
) -> None:
    """The global options as a command takes them (no environment variables: those are read once,
    by the group, so a value given before the command is not overridden by one from the env)."""


def _build_global_params() -> list:
    t = typer.Typer(add_completion=False)
    t.command()(_template)
    return list(typer.main.get_command(t).params)


GLOBAL_PARAMS = _build_global_params()
GLOBAL_NAMES = {p.name for p in GLOBAL_PARAMS}


def set_globals(home: Optional[str], quiet: bool, db_url: Optional[str], objects_url: Optional[str], as_json: bool) -> None:
    """The group callback's values; run on every invocation, so nothing carries over between
    calls of ``main`` in one process."""
    state.home, state.quiet, state.db_url, state.objects_url, state.json = home, quiet, db_url, objects_url, as_json


class GlobalOptionsCommand(TyperCommand):
    """A typer command that also accepts the global options after its name."""

    def __init__(self, *args: Any, params: list | None = None, **kwargs: Any) -> None:
        params = list(params or [])
        taken = {o for p in params for o in getattr(p, "opts", [])}
        params += [p for p in GLOBAL_PARAMS if not taken & set(p.opts)]
        super().__init__(*args, params=params, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        for name in GLOBAL_NAMES:
            if name not in ctx.params:
                continue
            value = ctx.params.pop(name)
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                setattr(state, name, value)
        if state.json and "as_json" in ctx.params:
            ctx.params["as_json"] = True
        return super().invoke(ctx)


def command(app: typer.Typer, *args: Any, **kwargs: Any) -> Callable:
    """``app.command(...)`` for a command that takes the global options too."""
    return app.command(*args, cls=GlobalOptionsCommand, **kwargs)
