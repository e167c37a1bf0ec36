"""HTTP routes of this component (none yet)."""


def setup(app, rt) -> None:
    return None
