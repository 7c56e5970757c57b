"""The training engine (no Typer, no Rich: the CLI and the Python API both drive it)."""
