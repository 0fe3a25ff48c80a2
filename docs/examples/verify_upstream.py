"""An upstream API that verifies Tengine's signatures, both forms, with the standard library and the
off-the-shelf Standard Webhooks library (`pip install standardwebhooks`).

    SIGNING_SECRET=whsec_... python3 verify_upstream.py [PORT]    # PORT: argv, else $PORT, else 8080; 0 = any

It answers 200 with a JSON of what it verified, or 401 with what failed. It prints one JSON line with the
port it listens on. Only for requests with a Content-Length (Tengine always sends one).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET = os.environ["SIGNING_SECRET"]  # the tool's auth_secret
TOLERANCE_SECS = 300

# The headers tng3 and the webhook-id binding cover, in this order (see docs/upstream.md).
SIGNED_HEADERS = ("x-tengine-project-id", "x-tengine-integration-id", "x-tengine-request-id",
                  "idempotency-key", "x-tengine-member-id", "x-tengine-member-email", "x-tengine-member-roles")


def request_block(method: str, target: str, headers) -> bytes:
    """METHOD, path?query and each signed header as received (absent: empty), one per line."""
    lines = [method, target] + [f"{name}:{headers.get(name, '')}" for name in SIGNED_HEADERS]
    if headers.get("x-tengine-input") is not None:  # a re-issued call's answers, only when sent
        lines.append(f"x-tengine-input:{headers['x-tengine-input']}")
    # http.server decodes the request line and headers as Latin-1: this gives back the bytes received.
    return ("\n".join(lines) + "\n").encode("latin-1")


def verify_tng3(method: str, target: str, headers, body: bytes) -> bool:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    ts = headers.get("x-tengine-timestamp", "")
    if not (ts.isascii() and ts.isdigit()) or abs(time.time() - int(ts)) > TOLERANCE_SECS:
        return False
    block = hashlib.sha256(request_block(method, target, headers)).hexdigest()
    line = f"tng3 {ts} {block} {hashlib.sha256(body).hexdigest()}"
    expected = "tng3=" + hmac.new(key, line.encode(), hashlib.sha256).hexdigest()
    # Several signatures (tng3 and tng2, per secret during a rotation) are space-separated.
    signatures = headers.get("x-tengine-signature", "").encode("latin-1").split(b" ")
    return any(hmac.compare_digest(expected.encode(), sig) for sig in signatures)


def verify_standard_webhooks(headers, body: bytes) -> bool:
    try:  # webhook-signature over "{webhook-id}.{webhook-timestamp}.{body}", and the timestamp
        Webhook(SECRET).verify(body, dict(headers.items()), json_parse=False)
        return True
    except Exception:
        return False


def verify_webhook_id_binding(method: str, target: str, headers) -> bool:
    """webhook-id is "{run id}.{binding}", signed by webhook-signature; the binding must match the
    request received. Only meaningful once verify_standard_webhooks passed (the binding is no secret)."""
    digest = hashlib.sha256(request_block(method, target, headers)).digest()
    binding = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    received = headers.get("webhook-id", "").rpartition(".")[2]
    same_time = headers.get("x-tengine-timestamp") == headers.get("webhook-timestamp")
    return binding == received and same_time


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        checks = {
            "standard_webhooks": verify_standard_webhooks(self.headers, body),
            "webhook_id_binding": verify_webhook_id_binding(self.command, self.path, self.headers),
            "tng3": verify_tng3(self.command, self.path, self.headers, body),
        }
        ok = all(checks.values())
        member = {k: self.headers.get(f"x-tengine-member-{k}", "").encode("latin-1").decode("utf-8", "replace")
                  for k in ("id", "email", "roles")}
        answer = {"verified": ok, "checks": checks, "method": self.command, "target": self.path,
                  "request_id": self.headers.get("x-tengine-request-id"), "member": member}
        data = json.dumps(answer).encode()
        self.send_response(200 if ok else 401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    server.serve_forever()
