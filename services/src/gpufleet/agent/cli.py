"""`gpufleet agent …` commands."""

import click


@click.group()
def agent() -> None:
    """The kernel agent and its RPC client."""
