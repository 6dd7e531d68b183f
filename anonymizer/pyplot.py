"""matplotlib's pyplot on its Agg backend (no display): what every figure here is drawn with. Imported where a
figure is drawn, not with the package (0.3-0.5 s), and in the background while a run's shards work."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
