"""The Typer command line. Modules here parse and print; engines do the work (and import torch lazily)."""
