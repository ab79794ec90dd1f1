"""Inference backends behind one small interface; see :mod:`trigger.backends.base`."""

from .base import (
    Backend,
    BackendUnavailable,
    available_backends,
    backend_class,
    create_backend,
    register_backend,
    usable_cores,
)

__all__ = ["Backend", "BackendUnavailable", "available_backends", "backend_class", "create_backend",
           "register_backend", "usable_cores"]
