#!/usr/bin/env node
// Reference MCP client on the official TypeScript SDK 2.x
// (@modelcontextprotocol/client, pinned in package.json) with
// `versionNegotiation: { mode: 'auto' }`: it probes `server/discover` and stays
// on revision 2026-07-28 when the server offers it. Used the way a stock SDK
// user would; prints exactly one JSON line on stdout, with the negotiated
// `protocolVersion`.
//
//   node client2.mjs [--url URL] [--token T] [--confirm yes|no] <command> ...
//   list                     -> {"tools": [Tool, ...]}      (the SDK follows nextCursor)
//   call NAME JSON_ARGS      -> {"isError", "content", "structuredContent", "meta"}
//   progress NAME JSON_ARGS  -> {"progress": [1, 2, 3], "isError", "content"}
//   list-changed ADMIN_URL ADMIN_TOKEN PROJECT_ID -> {"listChanged": true|false}
//      PATCHes the first tool's description through the admin API and waits up
//      to 10 s for the SDK's tools listChanged callback
//   cancel NAME JSON_ARGS    -> {"cancelled": true, "error", "elapsedMs"}: the call
//      is aborted 300 ms after it was sent (on 2026-07-28 that closes its stream)
//
//   --confirm yes|no  declares form elicitation and answers each
//      elicitation/create (the SDK fulfils an InputRequiredResult with it and
//      re-issues the call) by accepting with every boolean field true, or by
//      declining; the message asked goes to stderr.
// A JSON-RPC error is printed as {"error": {"code", "message"}} (exit 0);
// anything unexpected exits 2 with the stack on stderr.
import { Client, ProtocolError, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const CANCEL_AFTER_MS = 300;
const LIST_CHANGED_WAIT_MS = 10_000;
const warn = (msg) => process.stderr.write(`client2.mjs: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const within = (promise, ms, fallback) => Promise.race([promise, sleep(ms).then(() => fallback)]);

function parseArgs(argv) {
  const opts = { url: process.env.MCP_URL, token: process.env.MCP_TOKEN ?? '', confirm: null };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--url') opts.url = argv[++i];
    else if (a === '--token') opts.token = argv[++i];
    else if (a === '--confirm') opts.confirm = argv[++i];
    else rest.push(a);
  }
  [opts.command, ...opts.pos] = rest;
  if (['call', 'progress', 'cancel'].includes(opts.command)) {
    opts.name = opts.pos[0];
    opts.arguments = JSON.parse(opts.pos[1]) ?? undefined;
  }
  return opts;
}

const callDoc = (r) => ({
  isError: Boolean(r.isError),
  content: r.content ?? [],
  structuredContent: r.structuredContent ?? null,
  meta: r._meta ?? null,
});

async function run(opts) {
  let changed;
  const listChangedSeen = new Promise((r) => (changed = r));
  const capabilities = opts.confirm ? { elicitation: { form: {} } } : {};
  const client = new Client(
    { name: 'tengine-ts-client2', version: '0.1.0' },
    {
      capabilities,
      versionNegotiation: { mode: 'auto' },
      listChanged: { tools: { onChanged: (error) => (error ? warn(`listChanged: ${error}`) : changed(true)) } },
    },
  );
  if (opts.confirm) {
    client.setRequestHandler('elicitation/create', async (request) => {
      warn(`asked: ${request.params.message}`);
      if (opts.confirm === 'no') return { action: 'decline' };
      const properties = request.params.requestedSchema?.properties ?? {};
      const content = Object.fromEntries(
        Object.entries(properties)
          .filter(([, p]) => p.type === 'boolean')
          .map(([name]) => [name, true]),
      );
      return { action: 'accept', content };
    });
  }
  const headers = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers } });
  await client.connect(transport);
  const version = () => client.getNegotiatedProtocolVersion();
  try {
    const tool = { name: opts.name, arguments: opts.arguments };
    switch (opts.command) {
      case 'list':
        return { tools: (await client.listTools()).tools, protocolVersion: version() };
      case 'call':
        return { ...callDoc(await client.callTool(tool)), protocolVersion: version() };
      case 'progress': {
        const values = [];
        const r = await client.callTool(tool, { onprogress: (p) => values.push(p.progress) });
        return { progress: values, isError: Boolean(r.isError), content: r.content ?? [] };
      }
      case 'list-changed': {
        const [adminUrl, adminToken, projectId] = opts.pos;
        const { tools } = await client.listTools();
        // Give the SDK's subscription a moment to be acknowledged before the change.
        await sleep(500);
        const url = `${adminUrl.replace(/\/$/, '')}/v1/projects/${projectId}/tools/${encodeURIComponent(tools[0].name)}`;
        const res = await fetch(url, {
          method: 'PATCH',
          headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ description: `changed ${new Date().toISOString()}` }),
        });
        if (!res.ok) throw new Error(`PATCH ${url}: HTTP ${res.status} ${await res.text()}`);
        return { listChanged: await within(listChangedSeen, LIST_CHANGED_WAIT_MS, false) };
      }
      case 'cancel': {
        const controller = new AbortController();
        const started = Date.now();
        setTimeout(() => controller.abort(new Error('aborted by client2.mjs')), CANCEL_AFTER_MS);
        try {
          const r = await client.callTool(tool, { signal: controller.signal });
          return { cancelled: false, isError: Boolean(r.isError), content: r.content ?? [] };
        } catch (e) {
          if (!controller.signal.aborted) throw e;
          // Let the closed stream reach the server before the process exits.
          await sleep(300);
          return { cancelled: true, error: String(e?.message ?? e), elapsedMs: Date.now() - started };
        }
      }
    }
    throw new Error(`unknown command ${opts.command}`);
  } catch (e) {
    if (e instanceof ProtocolError) {
      if (e.data !== undefined) warn(`JSON-RPC error data: ${JSON.stringify(e.data)}`);
      return { error: { code: e.code, message: e.message }, protocolVersion: version() };
    }
    throw e;
  } finally {
    await client.close();
  }
}

run(parseArgs(process.argv.slice(2))).then(
  (doc) => process.stdout.write(`${JSON.stringify(doc)}\n`, () => process.exit(0)),
  (e) => {
    process.stderr.write(`${e?.stack ?? e}\n`);
    process.exit(2);
  },
);
