"""``trigger proxy``: one XSUB/XPUB forwarder that merges the decisions of several daemons.

Daemons connect their decision PUB sockets to the frontend (``output.connect: true``, the XSUB
side); subscribers connect to the backend (the XPUB side) and see every daemon's decisions on one
endpoint, with their subscriptions forwarded upstream so filtering still happens at the
publishers. ZeroMQ's own ``zmq.proxy_steerable`` does the forwarding in C on its own thread; the
calling thread only waits for a stop request and then steers it to terminate, so each socket is
used by one thread.
"""

from __future__ import annotations

import threading

import zmq

from ._log import logger


class Proxy:
    """XSUB (``frontend``, bound) -> XPUB (``backend``, bound), stoppable from another thread."""

    def __init__(self, frontend: str, backend: str, context: zmq.Context | None = None, hwm: int = 100_000):
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self._control_ep = f"inproc://proxy-control-{id(self)}"
        self._xsub = self._ctx.socket(zmq.XSUB)
        self._xpub = self._ctx.socket(zmq.XPUB)
        self._control = self._ctx.socket(zmq.PAIR)  # the proxy thread's end
        self._steer = self._ctx.socket(zmq.PAIR)  # the caller's end
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.SNDHWM, hwm)
        try:
            self._xsub.bind(frontend)
            self._xpub.bind(backend)
        except zmq.ZMQError:
            self._close()
            raise
        self.frontend = self._xsub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.backend = self._xpub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._control.bind(self._control_ep)
        self._steer.connect(self._control_ep)
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._control)
        except zmq.ContextTerminated:
            pass

    def start(self) -> None:
        self._thread.start()
        logger.info("ready: proxy from %s (daemons connect here) to %s (subscribers connect here)",
                    self.frontend, self.backend)

    def stop(self) -> None:
        """Terminate the forwarder and close its sockets (call from the thread that made it)."""
        if self._thread.is_alive():
            self._steer.send(b"TERMINATE")
            self._thread.join(timeout=5)
        self._close()

    def _close(self) -> None:
        for sock in (self._steer, self._control, self._xsub, self._xpub):
            sock.close()
        if self._own_ctx:
            self._ctx.term()
