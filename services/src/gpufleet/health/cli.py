"""`gpufleet health …` commands."""

import click


@click.group()
def health() -> None:
    """GPU health checks and the health agent."""
