"""`breakwater <command>`: one entry point for the operator, the sidecar and the tools.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so `breakwater validate` never loads kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol, cast

from breakwater.errors import BreakwaterError

COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("breakwater.controller.main", "run the operator (kopf) against the current cluster"),
    "proxy": ("breakwater.proxy.main", "run the circuit-breaker sidecar proxy"),
    "crd": ("breakwater.api.crdgen", "print or write the CustomResourceDefinition generated from the models"),
    "validate": ("breakwater.api.validate", "validate CircuitBreakerPolicy manifests offline"),
    "api-docs": ("breakwater.api.docgen", "print or write the API reference generated from the models"),
    "render-config": ("breakwater.injection.render_cli", "render the sidecar config for policy manifests"),
    "simulate": ("breakwater.adaptive.simulate_cli", "replay a history of calls against a policy's breaker"),
    "promote": (
        "breakwater.adaptive.promote_cli",
        "print the patch that puts a policy's suggestions in its spec",
    ),
    "dev-cluster": ("breakwater.testing.cli", "start a local control plane from the cached binaries"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _version() -> str:
    import importlib.metadata  # only for --version: it costs the sidecar 3.6 MB of RSS

    try:
        return importlib.metadata.version("breakwater")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import breakwater.proxy.fast.server  # noqa: F401  # loaded, so that it can say how it was built
        from breakwater.proxy.compiled import hot_path_build

        # On stdout, as argparse's own version action. The build: the image compiles the hot path.
        print(f"breakwater {_version()} (hot path {hot_path_build()})")
        parser.exit()


def _load(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="breakwater", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv:  # no command: the usage, as an error
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --version, --help and an unknown command exit here
        return 2
    module = _load(argv[0])
    cmd_parser = argparse.ArgumentParser(prog=f"breakwater {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
    except BreakwaterError as exc:  # an error we raise on purpose has a message, not a traceback
        print(f"breakwater {argv[0]}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `breakwater crd | head`: the reader left, nothing went wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
