"""A request handler base for the loopback test servers (s3.py, shelby_rpc.py):
HTTP/1.1 keep-alive, no console noise, and a request log whose entry is
published when the status line goes out, so a client that has read a
response always finds its request in the owner's log (owner._append_log)."""
import http.server


class LoggedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    timeout = 300          # idle keep-alive connections are dropped after this

    _entry = None          # the log entry of the request being answered, set by the subclass
    _entry_logged = False

    def log_message(self, fmt, *args):
        pass

    def send_response_only(self, code, message=None):
        entry = self._entry
        if entry is not None and code >= 200 and not self._entry_logged:
            entry['status'] = code
            self._entry_logged = True
            self.server.owner._append_log(entry)
        super().send_response_only(code, message)
