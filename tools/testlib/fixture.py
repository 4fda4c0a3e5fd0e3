"""What the loopback server fixtures (nginx.py, s3.py, shelby_rpc.py, stall.py)
share: context-manager use of start()/close(), a socketserver on a thread of
its own, reading their logs, and the standalone mode the C++ tests drive
(print one JSON line once ready, serve until stdin reaches EOF)."""
import json
import os
import signal
import sys
import threading

from . import cleanup


class Fixture:
    """A server with start() and close(). `with` starts it and always closes
    it, also when start() fails half-way."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class ServerThread:
    """`httpd.serve_forever()` on a daemon thread named `name`, and its stop."""

    def __init__(self, httpd, name):
        self.httpd = httpd
        self.port = httpd.server_address[1]
        self.thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.1},
                                       name=name, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def read_text(path):
    """The text of the file at `path` (a log), or '' if there is none (yet)."""
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except (OSError, TypeError):
        return ''


def serve_until_eof(fixture, info, errors=()):
    """Start `fixture`, print json(info(fixture)) on one line, serve until stdin
    reaches EOF (the parent closed the pipe) or SIGINT/SIGTERM, then close it.
    Returns the exit status: 0, or 1 after printing an exception of `errors`."""
    signal.signal(signal.SIGINT, cleanup._on_signal)
    try:
        fixture.start()
        sys.stdout.write(json.dumps(info(fixture)) + '\n')
        sys.stdout.flush()
        while os.read(sys.stdin.fileno(), 65536):
            pass
    except KeyboardInterrupt:
        pass
    except tuple(errors) as e:
        print(f'{type(fixture).__module__}: {e}', file=sys.stderr)
        return 1
    finally:
        fixture.close()
    return 0
