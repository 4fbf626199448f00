"""The command line (Typer): ``rnnprobe.cli.app:app``."""
