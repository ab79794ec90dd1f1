"""Real-time machine-learning trigger for detector readout streams over ZeroMQ."""

__version__ = "0.1.0"
