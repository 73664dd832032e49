# Helpers shared by every stage.
from pathlib import Path


def results(*parts):
    """A path under the configured results folder."""
    return str(Path(config["results"], *parts))


def flame_assets():
    """The FLAME asset folder: the procedural one made by rule `assets`, or the user's."""
    source = config["assets"]["flame"]
    if source == "procedural":
        return results("assets", "procedural")
    return source
