"""BYOL pretraining, export and evaluation: the lowest wing (imports nothing from `index` or `app`)."""

__version__ = "0.1.0"
