"""A TCP proxy the tests control: forwards 127.0.0.1:<port> to a target, and can
``cut()`` (close every connection, refuse new ones) and ``restore()``, or ``stall()``
(hold every byte, close nothing: a network that drops packets) and ``resume()``.

Thread based: one accept thread, two pump threads per connection. While cut, new
connections are either refused (``cut(refuse=True)``: the listening socket is closed,
ECONNREFUSED, as when the server is down; ``restore()`` listens again on the same
port) or accepted and closed at once (the default: a server dying on every connection),
which lets the test count how often clients try while the database is away.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self.refused_while_cut = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closed = False
        self.cut_now = False
        self._flowing = threading.Event()
        self._flowing.set()

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        self._listen()

    def cut(self, *, refuse: bool = False) -> None:
        """Close every proxied connection; new ones are refused (``refuse``) or closed at once."""
        with self._lock:
            self.cut_now = True
            self.refused_while_cut = 0
            listener = self._listener if refuse else None
            if refuse:
                self._listener = None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            _close(listener)
            if self._accept_thread is not None:
                self._accept_thread.join(timeout=5)
        for conn in conns:
            _close(conn)

    def stall(self) -> None:
        """Hold every byte in either direction from now on (connections stay open)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held, and everything after it."""
        self._flowing.set()

    def restore(self) -> None:
        with self._lock:
            self.cut_now = False
            listening = self._listener is not None
        if not listening:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self.resume()  # no pump stays held
        self.cut(refuse=True)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def url_for(self, url: str) -> str:
        """``url`` (a postgresql:// URL on the target) pointing at the proxy instead."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    # -- machinery --------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy", daemon=True)
        self._accept_thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut() or close()
            with self._lock:
                if self.cut_now:
                    self.refused_while_cut += 1
                    _close(client)
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self.cut_now or self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    continue
                self._conns.update({client, upstream})
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
