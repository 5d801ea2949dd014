"""The `vlx` command line. Each command parses flags, builds a config and calls one recipe or API function."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train, fine-tune and run vision-language models the LLaVA-1.5 way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make, check and inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
