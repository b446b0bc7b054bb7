"""The Typer application and the error boundary every command runs inside."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="A network lab for the ELB -> NodePort -> kube-proxy -> pod path.")


def main() -> None:
    app()
