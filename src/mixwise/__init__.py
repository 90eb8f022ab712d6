"""mixwise: decide what a model trains on."""

__version__ = "0.1.0"
