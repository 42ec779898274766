"""ResIST: Residual Independent Subnetwork Training (Dun, Wolfe, Jermaine, Kyrillidis)."""

__version__ = "0.1.0"
