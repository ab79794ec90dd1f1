"""The daemon's runtime: receiver, batcher, inference workers, accounting, metrics, reloader.

:mod:`trigger.runtime.daemon` composes them; each part has a module of its own.
"""
