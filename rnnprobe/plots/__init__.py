"""Plots: ``rnnprobe/plots/<analysis>.py`` has ``plot(result, model) -> {name: Figure}``.

Figures are made with the Agg backend (no display needed) and saved and closed
by the report writer.
"""

import matplotlib

matplotlib.use("Agg")
