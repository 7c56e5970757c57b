"""What every command's engine shares: the checkpoint format, device layout, run directories, image grids and the
reporter interface. Nothing here imports Typer or Rich, nor anything from ``train/`` or ``sampling``."""
