"""Entry point: assembles the sub-commands and turns TunelensError into a one-paragraph message."""
from __future__ import annotations

import os
import sys

import click
import typer
from rich.console import Console
from rich.markup import escape

from tunelens.cli import (
    align_cmd,
    data_cmd,
    eval_cmd,
    heads_cmd,
    models_cmd,
    probe_cmd,
    sft_cmd,
    steer_cmd,
    synth_cmd,
    testbed_cmd,
)
from tunelens.errors import TunelensError

app = typer.Typer(name="tunelens", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Instruction-tune causal LMs without losing their reliance on context, and measure it.")
app.command("models")(models_cmd.models)
app.add_typer(data_cmd.app, name="data")
app.add_typer(probe_cmd.app, name="probe")
app.add_typer(heads_cmd.app, name="heads")
app.add_typer(steer_cmd.app, name="steer")
app.add_typer(testbed_cmd.app, name="testbed")
app.add_typer(eval_cmd.app, name="eval")
app.command("sft", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sft_cmd.sft)
app.command("align", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(align_cmd.align)
app.command("synth", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(synth_cmd.synth)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print without a traceback (``--debug`` shows it) and exit with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TUNELENS_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    err = Console(stderr=True, soft_wrap=True)
    try:
        rc = app(args=args, prog_name="tunelens", standalone_mode=False)
        return int(rc or 0)
    except TunelensError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
