"""A tiny TCP forwarder for outage tests, put in front of PostgreSQL.

Two kinds of outage:

* ``stop`` / ``start``: the database is unreachable — the listener is closed and live connections
  are killed (the peer sees a reset or a refused connection); ``start`` listens again on the same port.
* ``blackhole`` / ``resume``: the database stalls — connections stay open and new ones are still
  accepted (and connected upstream), but no byte is passed in either direction, so a client waits
  for an answer that does not come (its kernel's TCP keepalives are still answered, as by a peer
  whose server hangs). ``resume`` passes bytes again, including what was held back.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TCPForwarder:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._flowing = threading.Event()  # cleared while blackholed
        self._flowing.set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._flowing.set()  # pumps held by a blackhole see their closed sockets and end

    def blackhole(self) -> None:
        """Keep every connection open and keep accepting, but pass no bytes until ``resume``."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass bytes again, on the connections held open by ``blackhole`` too."""
        self._flowing.set()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._running.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls per round trip
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # bytes read just before a blackhole are held back too
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._conns.difference_update((src, dst))
