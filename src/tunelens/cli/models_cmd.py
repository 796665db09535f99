"""``tunelens models``: list the named presets."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tunelens.models import PRESETS


def models() -> None:
    """List the model presets (tiny random models, real models shipped in wheels, testbed models)."""
    table = Table("preset", "source", "description")
    for name in sorted(PRESETS):
        p = PRESETS[name]
        table.add_row(name, p.source, p.description)
    Console().print(table)
