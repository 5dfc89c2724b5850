"""What the bridge and the workers share: state names, Redis keys, settings and task types."""

__version__ = "0.1.0"
