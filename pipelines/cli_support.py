"""What every ``fashionbert`` command has in common: job files, effective configs, JSON logs, one-line errors.

A command function decorated with :func:`command_options` gets two more options and a
uniform way to run:

``--config JOB.yaml``
    A job file (YAML, or JSON for ``.json``) mapping option names to values, e.g.
    ``products: 2000`` or ``exclude-category: [shoes]``; keys are the long option names
    with dashes or underscores. The option is eager: its callback loads the file into
    ``ctx.default_map`` before any other option is read, so every value in the file
    becomes that option's default and flags given on the command line win. An unknown
    key, an unreadable file or a value that is neither a job file nor a named config is a
    one-line error (exit 1). Relative paths in a job file are relative to the working
    directory, as on the command line. ``command`` and ``version`` keys (written by the
    effective config below) are checked / ignored. A command may also accept *named*
    configs (``fashionbert pretrain --config tiny`` = ``--model tiny``): pass
    ``named_configs={"tiny": {"model": "tiny"}, ...}``; a job file may then also say
    ``config: tiny``.

``--log-json``
    (also accepted before the command: ``fashionbert --log-json CMD ...``.) Every line the
    command prints (``typer.echo``, the jobs' ``echo`` callbacks, ``print``), every
    Python ``logging`` record (the root logger is set to INFO) and every warning becomes
    one JSON object per line on **stdout**, with keys ``ts`` (ISO 8601, UTC), ``level``
    (info, warning, error, ... ; log records add ``logger``), ``command`` and ``message``;
    a failure is a ``"level": "error"`` line. tqdm progress bars are switched off (the
    installed tqdm reads ``TQDM_DISABLE`` only at import and lets an explicit
    ``disable=`` win, so ``tqdm.std.tqdm.__init__`` is wrapped for the command instead).
    Not covered: what bypasses Python's ``sys.stdout``/``logging`` root (native libraries
    writing to the file descriptors, uvicorn's own non-propagating loggers under ``serve``).

The effective config
    After the options are resolved, and before the job runs (so an interrupted or failed
    run can be rerun as it was), every option's final value is written, with ``command``
    and ``version``, to ``<outputs dir>/fashionbert-<command>.yaml`` (``outputs="out"``),
    or next to an output file as ``<file stem>.config.yaml`` (``output_file="json_out"``:
    ``--json runs/eval.json`` -> ``runs/eval.config.yaml``). Nothing is written when the
    command has no output option or it is unset. ``fashionbert CMD --config THAT_FILE``
    reruns the same job. Only rank 0 writes under ``torchrun``.

Errors
    Any exception of the command body becomes ``error: <reason>`` on stderr (a JSON line on
    stdout with ``--log-json``) and exit code 1; ``fashionbert --debug CMD`` (or
    ``FASHIONBERT_DEBUG=1``) re-raises it with its traceback. With ``--log-json``, click's
    own usage errors (missing option, bad value) are JSON lines too (exit 2); that needs
    the root app built with ``cls=CliGroup``.

Adding a command
----------------
Put ``@command_options(...)`` between ``@app.command()`` and the function; nothing else::

    @app.command("continue-pretrain")
    @command_options(outputs="out")          # parameter name of the output *directory* option
    def continue_pretrain(out: Annotated[Path, typer.Option(...)], ...) -> None:
        \"\"\"One-line summary.

        \\b
        Example:
            fashionbert continue-pretrain --checkpoint runs/tiny --out runs/shoes
        \"\"\"

    tags_app = typer.Typer(help="...")      # a sub-app: the same decorator on each of its commands
    app.add_typer(tags_app, name="tags")

    @tags_app.command("train")
    @command_options(outputs="out")          # -> <out>/fashionbert-tags-train.yaml, "command": "tags train"
    def tags_train(out: Annotated[Path, typer.Option(...)], ...) -> None: ...

    @tags_app.command("eval")
    @command_options(output_file="json_out")  # parameter name of an output *file* option -> <stem>.config.yaml
    def tags_eval(json_out: Annotated[Path | None, typer.Option("--json")] = None, ...) -> None: ...

``@command_options()`` with no argument (``serve``): no effective config is written. The
parameter names ``config`` and ``log_json`` are reserved for the added options. Keep the
``\\b`` line before ``Example:``: it makes click's plain renderer keep the example lines
as they are (rich keeps them anyway); tests/test_cli_config.py checks the help of every
registered command, sub-apps included. The root app must be ``typer.Typer(cls=CliGroup)``
with a callback that calls :func:`set_global_options` (pipelines/cli.py does both).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from pipelines.cli_logging import JsonLines, json_logging

F = TypeVar("F", bound=Callable[..., Any])

JOB_FILE_SUFFIXES = (".yaml", ".yml", ".json")
META_KEYS = ("command", "version")  # written into every effective config; not options
COMMON_PANEL = "Common options"
_JSON_KEY = "fashionbert.log_json"
_DEBUG_KEY = "fashionbert.debug"
_RESERVED = ("config", "log_json")

# click's exception classes, found through typer's public BadParameter: typer >= 0.2x vendors click.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

_state = {"debug": False}  # mirrors --debug for one_line_errors (the context is the source of truth)


class ConfigError(ValueError):
    """A job file or ``--config`` value that cannot be used."""


# --------------------------------------------------------------------------- the root app


class CliGroup(TyperGroup):
    """The root group: notices ``--log-json`` anywhere on the command line before parsing, so
    errors found while parsing (a bad ``--config``, a missing option) come out as JSON too."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if ctx.parent is None and _wants_json(args):
            ctx.meta[_JSON_KEY] = True
        return _json_usage_errors(ctx, super().parse_args, ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        return _json_usage_errors(ctx, super().invoke, ctx)


def _wants_json(args: list[str]) -> bool:
    head = args[: args.index("--")] if "--" in args else args
    return "--log-json" in head


def _json_usage_errors(ctx: typer.Context, call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except _ClickException as exc:
        if not ctx.meta.get(_JSON_KEY) or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        command = command_name(getattr(exc, "ctx", None) or ctx)
        JsonLines(command, sys.stdout).emit("error", exc.format_message())
        raise typer.Exit(exc.exit_code) from None


def set_global_options(ctx: typer.Context, *, debug: bool = False, log_json: bool = False) -> None:
    """For the root callback: ``fashionbert --debug --log-json CMD ...``."""
    debug = debug or os.environ.get("FASHIONBERT_DEBUG") == "1"
    ctx.meta[_DEBUG_KEY] = debug
    ctx.meta[_JSON_KEY] = bool(ctx.meta.get(_JSON_KEY) or log_json)
    _state["debug"] = debug


def command_name(ctx: Any) -> str:
    """``synth``, ``eval``, ``tags train``: the command path without the program name."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fashionbert-search")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


# --------------------------------------------------------------------------- the decorator


def command_options(
    *,
    outputs: str | None = None,
    output_file: str | None = None,
    named_configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Add ``--config`` and ``--log-json`` to a typer command, write its effective config, make errors one line.

    outputs: parameter name of the output *directory* option (the config goes to
        ``<dir>/fashionbert-<command>.yaml``); output_file: parameter name of an output *file*
        option (the config goes next to it, ``<stem>.config.yaml``); named_configs: values
        ``--config NAME`` stands for (``{"tiny": {"model": "tiny"}}``: option parameter names).
    """
    if outputs and output_file:
        raise TypeError("command_options: give outputs= or output_file=, not both")
    named = {k: dict(v) for k, v in (named_configs or {}).items()}

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        for name in _RESERVED:
            if name in sig.parameters:
                raise TypeError(f"{fn.__name__}: the parameter name {name!r} is reserved for the common options")
        for name in filter(None, (outputs, output_file)):
            if name not in sig.parameters:
                raise TypeError(f"{fn.__name__}: no parameter {name!r} to write the effective config next to")
        ctx_name = next((p.name for p in sig.parameters.values() if _is_context(p.annotation)), None)
        own_ctx = ctx_name is not None
        if ctx_name is None:
            ctx_name = "_fashionbert_ctx"

        config_help = "Job file (.yaml, .yml, .json) of option values; flags given here override it."
        if named:
            config_help += f" Or a named config: {' | '.join(named)} (same as {_describe(named)})."
        extra = [
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, default=None,
                annotation=Annotated[str | None, typer.Option(
                    "--config", is_eager=True, callback=_config_callback(named), metavar="FILE" + ("|NAME" if named else ""),
                    help=config_help, rich_help_panel=COMMON_PANEL, show_default=False,
                )],
            ),
            inspect.Parameter(
                "log_json", inspect.Parameter.KEYWORD_ONLY, default=False,
                annotation=Annotated[bool, typer.Option(
                    "--log-json", help="Print JSON lines on stdout (ts, level, command, message); no progress bars.",
                    rich_help_panel=COMMON_PANEL, show_default=False,
                )],
            ),
        ]
        if not own_ctx:
            extra.append(inspect.Parameter(ctx_name, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD else p
                  for p in sig.parameters.values()]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs[ctx_name] if own_ctx else kwargs.pop(ctx_name)
            kwargs.pop("config", None)
            json_mode = bool(kwargs.pop("log_json", False) or ctx.meta.get(_JSON_KEY))
            debug = bool(ctx.meta.get(_DEBUG_KEY) or _state["debug"] or os.environ.get("FASHIONBERT_DEBUG") == "1")
            command = command_name(ctx)
            with _reporter(command, json_mode) as report:
                try:
                    target = _effective_config_path(command, kwargs, outputs, output_file)
                    if target is not None and os.environ.get("RANK", "0") == "0":
                        write_effective_config(target, command, ctx, kwargs)
                    return fn(**kwargs)
                except (typer.Exit, typer.Abort, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - the CLI boundary
                    if debug:
                        raise
                    report(_one_line(exc))
                    raise typer.Exit(1) from None

        wrapper.__signature__ = sig.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**{p.name: p.annotation for p in params if p.annotation is not p.empty},
                                   **{p.name: p.annotation for p in extra}, "return": sig.return_annotation}
        return wrapper  # type: ignore[return-value]

    return decorate


def one_line_errors(fn: F) -> F:
    """Turn any exception into ``error: <reason>`` and exit code 1 (unless --debug).

    Kept for functions outside :func:`command_options` (which does this itself)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            if _state["debug"]:
                raise
            typer.secho(f"error: {_one_line(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _is_context(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, typer.Context.__mro__[1])


def _describe(named: Mapping[str, Mapping[str, Any]]) -> str:
    keys = sorted({k for v in named.values() for k in v})
    return ", ".join("--" + k.replace("_", "-") + " NAME" for k in keys)


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text or type(exc).__name__


# --------------------------------------------------------------------------- job files


def _config_callback(named: Mapping[str, Mapping[str, Any]]) -> Callable[..., Any]:
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
        if value is None or ctx.resilient_parsing:
            return value
        try:
            values = resolve_config(value, ctx, named)
        except ConfigError as exc:
            fail(ctx, str(exc))
        ctx.default_map = {**(ctx.default_map or {}), **values}
        return value

    return callback


def fail(ctx: typer.Context, message: str, code: int = 1) -> Any:
    """Print the one-line error (a JSON line in JSON mode) and exit."""
    if ctx.meta.get(_JSON_KEY):
        JsonLines(command_name(ctx), sys.stdout).emit("error", message)
    else:
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def resolve_config(value: str, ctx: typer.Context, named: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``--config VALUE`` -> ``{parameter name: value}`` for ``ctx.default_map``."""
    named = named or {}
    if value in named:
        return dict(named[value])
    path = Path(value)
    if path.suffix.lower() in JOB_FILE_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"--config: job file not found: {value}")
        return map_job_values(load_job_file(path), ctx, named, source=str(path))
    if named:
        raise ConfigError(f"--config {value!r} is neither a job file (.yaml, .yml, .json) nor a named config "
                          f"({', '.join(named)})")
    raise ConfigError(f"--config {value!r} is not a job file (.yaml, .yml or .json)")


def load_job_file(path: Path) -> dict[str, Any]:
    """A job file's mapping: JSON for ``.json``, YAML otherwise (an empty file is ``{}``)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json, yaml and OS errors alike
        raise ConfigError(f"{path}: cannot read the job file: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must hold a mapping of option names to values, not {type(data).__name__}")
    return data


def option_keys(command: Any) -> dict[str, Any]:
    """Every accepted job-file key of a click command (long option names, dashes or underscores) -> its parameter."""
    keys: dict[str, Any] = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name == "config":
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                name = opt[2:]
                keys[name.replace("_", "-")] = keys[name.replace("-", "_")] = param
    return keys


def primary_key(param: Any) -> str:
    """The key an effective config writes for a parameter: its first long option name (``--json`` -> ``json``)."""
    long_names = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return long_names[0] if long_names else param.name


def map_job_values(data: Mapping[str, Any], ctx: typer.Context, named: Mapping[str, Mapping[str, Any]] | None = None,
                   source: str = "job file") -> dict[str, Any]:
    """Check a job file's keys against the command's options; return ``{parameter name: value}``."""
    named = named or {}
    keys = option_keys(ctx.command)
    command = command_name(ctx)
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    data = dict(data)
    if "command" in data and "command" not in keys:
        written_for = data.pop("command")
        if written_for != command:
            raise ConfigError(f"{source} is a job for `fashionbert {written_for}`, not `fashionbert {command}`")
    if "version" not in keys:
        data.pop("version", None)
    if "config" in data:  # a named config inside a job file (pretrain: config: tiny)
        name = data.pop("config")
        if not named:
            raise ConfigError(f"{source}: unknown key 'config' for `fashionbert {command}`; "
                              f"valid keys: {', '.join(_valid_keys(ctx.command, named))}")
        if name not in named:
            raise ConfigError(f"{source}: config: {name!r} is not a named config ({', '.join(named)}); "
                              "job files cannot include other job files")
        values.update(named[name])
    for key, value in data.items():
        param = keys.get(str(key))
        if param is None:
            valid = _valid_keys(ctx.command, named)
            close = difflib.get_close_matches(str(key).replace("_", "-"), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r} for `fashionbert {command}`{hint}; "
                              f"valid keys: {', '.join(valid)}")
        if param.name in seen:
            raise ConfigError(f"{source}: {seen[param.name]!r} and {key!r} set the same option")
        seen[param.name] = str(key)
        if getattr(param, "multiple", False) and value is not None and not isinstance(value, (list, tuple)):
            value = [value]
        values[param.name] = value
    return values


def _valid_keys(command: Any, named: Mapping[str, Any] | None = None) -> list[str]:
    keys = [primary_key(p) for p in command.params
            if getattr(p, "param_type_name", "") == "option" and p.name != "config"]
    return keys + (["config"] if named else [])


# --------------------------------------------------------------------------- the effective config


def _effective_config_path(command: str, kwargs: Mapping[str, Any], outputs: str | None,
                           output_file: str | None) -> Path | None:
    if outputs and kwargs.get(outputs) is not None:
        return Path(kwargs[outputs]) / f"fashionbert-{command.replace(' ', '-')}.yaml"
    if output_file and kwargs.get(output_file) is not None:
        path = Path(kwargs[output_file])
        sidecar = path.with_suffix(".config.yaml")
        return sidecar if sidecar != path else path.with_name(path.name + ".config.yaml")
    return None


def plain_value(value: Any) -> Any:
    """A YAML/JSON-safe copy: Paths as strings, enums as their values, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return plain_value(value.value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return value


def effective_config(command: str, ctx: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """``command``, ``version`` and every option's final value under its job-file key."""
    out: dict[str, Any] = {"command": command, "version": package_version()}
    for param in ctx.command.params:
        if param.name in _RESERVED or param.name not in values:
            continue
        out[primary_key(param)] = plain_value(values[param.name])
    return out


def write_effective_config(path: Path, command: str, ctx: typer.Context, values: Mapping[str, Any]) -> Path:
    import yaml

    data = effective_config(command, ctx, values)
    text = (f"# `fashionbert {command}`: the effective configuration of this job.\n"
            f"# Rerun it with: fashionbert {command} --config {path}\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _reporter(command: str, json_mode: bool) -> Iterator[Callable[[str], None]]:
    if json_mode:
        with json_logging(command) as report:
            yield report
    else:
        yield lambda message: typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
