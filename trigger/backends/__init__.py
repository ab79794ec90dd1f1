"""Inference backends behind one small interface; see :mod:`trigger.backends.base`."""

from .base import Backend, BackendUnavailable, available_backends, create_backend, register_backend

__all__ = ["Backend", "BackendUnavailable", "available_backends", "create_backend", "register_backend"]
