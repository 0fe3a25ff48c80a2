// An upstream API that verifies Tengine's signatures, both forms, with node:crypto and the
// off-the-shelf Standard Webhooks library (`npm install standardwebhooks`).
//
//   SIGNING_SECRET=whsec_... node verify_upstream.mjs [PORT]    # PORT: argv, else $PORT, else 8080; 0 = any
//
// It answers 200 with a JSON of what it verified, or 401 with what failed. It prints one JSON line with
// the port it listens on.

import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import http from "node:http";
import { Webhook } from "standardwebhooks";

const SECRET = process.env.SIGNING_SECRET; // the tool's auth_secret
const TOLERANCE_SECS = 300;

// The headers tng3 and the webhook-id binding cover, in this order (see docs/upstream.md).
const SIGNED_HEADERS = ["x-tengine-project-id", "x-tengine-integration-id", "x-tengine-request-id",
  "idempotency-key", "x-tengine-member-id", "x-tengine-member-email", "x-tengine-member-roles"];

// METHOD, path?query and each signed header as received (absent: empty), one per line.
function requestBlock(method, target, headers) {
  const lines = [method, target, ...SIGNED_HEADERS.map((name) => `${name}:${headers[name] ?? ""}`)];
  // A re-issued call's answers, only when sent.
  if (headers["x-tengine-input"] !== undefined) lines.push(`x-tengine-input:${headers["x-tengine-input"]}`);
  // Node decodes header values as Latin-1: this gives back the bytes received.
  return Buffer.from(lines.join("\n") + "\n", "latin1");
}

const sha256 = (data) => createHash("sha256").update(data);
const same = (a, b) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

function verifyTng3(method, target, headers, body) {
  const key = Buffer.from(SECRET.replace(/^whsec_/, ""), "base64");
  const ts = headers["x-tengine-timestamp"] ?? "";
  if (!/^[0-9]+$/.test(ts) || Math.abs(Date.now() / 1000 - Number(ts)) > TOLERANCE_SECS) return false;
  const block = sha256(requestBlock(method, target, headers)).digest("hex");
  const line = `tng3 ${ts} ${block} ${sha256(body).digest("hex")}`;
  const expected = "tng3=" + createHmac("sha256", key).update(line).digest("hex");
  // Several signatures (tng3 and tng2, per secret during a rotation) are space-separated.
  return (headers["x-tengine-signature"] ?? "").split(" ").some((sig) => same(expected, sig));
}

function verifyStandardWebhooks(headers, body) {
  try { // webhook-signature over "{webhook-id}.{webhook-timestamp}.{body}", and the timestamp
    new Webhook(SECRET).verify(body, headers, { jsonParse: false });
    return true;
  } catch {
    return false;
  }
}

// webhook-id is "{run id}.{binding}", signed by webhook-signature; the binding must match the request
// received. Only meaningful once verifyStandardWebhooks passed (the binding is no secret).
function verifyWebhookIdBinding(method, target, headers) {
  const binding = sha256(requestBlock(method, target, headers)).digest("base64url");
  const received = (headers["webhook-id"] ?? "").split(".").pop();
  return binding === received && headers["x-tengine-timestamp"] === headers["webhook-timestamp"];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const checks = {
      standard_webhooks: verifyStandardWebhooks(req.headers, body),
      webhook_id_binding: verifyWebhookIdBinding(req.method, req.url, req.headers),
      tng3: verifyTng3(req.method, req.url, req.headers, body),
    };
    const ok = Object.values(checks).every(Boolean);
    const member = {};
    for (const k of ["id", "email", "roles"]) {
      member[k] = Buffer.from(req.headers[`x-tengine-member-${k}`] ?? "", "latin1").toString("utf8");
    }
    const answer = { verified: ok, checks, method: req.method, target: req.url,
      request_id: req.headers["x-tengine-request-id"] ?? null, member };
    res.writeHead(ok ? 200 : 401, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
  });
});

const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);
server.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
