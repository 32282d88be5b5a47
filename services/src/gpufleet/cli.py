"""The `gpufleet` command: one click group with a sub-group per service.

Sub-groups are imported only when invoked, so `gpufleet health …` never pays
for importing the Kubernetes client or the agent's server code.
"""

from __future__ import annotations

import importlib

import click

from gpufleet import __version__

# name -> (module, attribute, one-line help shown by `gpufleet --help`)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "health": ("gpufleet.health.cli", "health", "GPU health checks and the health agent."),
    "agent": ("gpufleet.agent.cli", "agent", "The kernel agent and its RPC client."),
    "place": ("gpufleet.placement.cli", "place", "GPU workload placement, replay and benchmarks."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpufleet")
def main() -> None:
    """gpufleet: GPU node health, compute sessions and workload placement."""
