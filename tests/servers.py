"""Servers that tests start on 127.0.0.1 and stop themselves."""

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_files(files: dict[str, bytes], asked: list[str] | None = None, down: set[str] | None = None):
    """An HTTP server on 127.0.0.1 serving `files` by path; anything else is a 404. Yields its base URL. Each path
    asked for is appended to `asked`; the paths in `down` (a set the caller may change meanwhile) get a 503."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if asked is not None:
                asked.append(self.path)  # list.append is atomic: the server's threads may share it
            if down and self.path in down:
                self.send_error(503)
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free 127.0.0.1 port with `handler`; yields the port, stops it after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def mlflow_ui(backend_store_uri: str, timeout_s: float = 180):
    """`mlflow ui` on a free 127.0.0.1 port (one worker); yields its URL, stops it (and its workers) after."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow ui did not come up on {url}") from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
