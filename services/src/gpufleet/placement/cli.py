"""`gpufleet place …` commands."""

import click


@click.group()
def place() -> None:
    """GPU workload placement, replay and benchmarks."""
