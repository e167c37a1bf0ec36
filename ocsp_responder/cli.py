"""Command-line commands of this component, registered on the `shomei` group."""
import click


def register(main: click.Group) -> None:
    return None
