#!/usr/bin/env node
// Header-adding reverse proxy for the MCP conformance suite, which cannot send
// an Authorization header itself.
//
//   TENGINE_API_KEY=tengine_… node auth-proxy.mjs LISTEN_PORT TARGET_URL
//
// Listens on 127.0.0.1:LISTEN_PORT, forwards every request to TARGET_URL's origin
// (same path and query) with `Authorization: Bearer $TENGINE_API_KEY` added, and
// streams request and response bodies through unbuffered, so SSE responses reach
// the client event by event. The Host and Origin headers are passed through as the
// client sent them, so the server's own DNS-rebinding checks are what get tested.
// No dependencies; loopback only.
import http from 'node:http';

const [portArg, targetArg] = process.argv.slice(2);
const token = process.env.TENGINE_API_KEY;
if (!portArg || !targetArg || !token) {
  console.error('usage: TENGINE_API_KEY=… node auth-proxy.mjs LISTEN_PORT TARGET_URL');
  process.exit(2);
}
const target = new URL(targetArg);
if (target.protocol !== 'http:' || !['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) {
  console.error(`target must be http on loopback, got ${targetArg}`);
  process.exit(2);
}

// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded.
const HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate',
  'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

function forwardHeaders(raw) {
  const out = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const lower = name.toLowerCase();
    if (HOP.has(lower)) continue;
    if (out[name] === undefined) out[name] = raw[i + 1];
    else out[name] = [].concat(out[name], raw[i + 1]);
  }
  return out;
}

const agent = new http.Agent({ keepAlive: true });

const server = http.createServer((req, res) => {
  const headers = forwardHeaders(req.rawHeaders);
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase() === 'authorization') delete headers[name];
  }
  headers.authorization = `Bearer ${token}`;
  const upstream = http.request(
    {
      host: target.hostname.replace(/^\[|\]$/g, ''),
      port: target.port || 80,
      method: req.method,
      path: req.url,
      headers, // Host included unchanged
      agent,
    },
    (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, forwardHeaders(up.rawHeaders));
      res.flushHeaders();
      up.on('data', (chunk) => res.write(chunk)); // write each chunk as it arrives
      up.on('end', () => res.end());
      up.on('error', () => res.destroy());
    },
  );
  upstream.on('error', (err) => {
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`auth-proxy: upstream error: ${err.message}\n`);
    } else {
      res.destroy();
    }
  });
  // The client going away (e.g. cancelling an SSE stream) ends the upstream request.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
});

server.listen(Number(portArg), '127.0.0.1', () => {
  console.log(`auth-proxy listening on http://127.0.0.1:${portArg} -> ${target.origin}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
