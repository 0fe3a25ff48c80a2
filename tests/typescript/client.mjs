#!/usr/bin/env node
// Reference MCP client for Tengine's integration tests, on the official
// TypeScript SDK (@modelcontextprotocol/sdk 1.x, pinned in package.json): the
// SDK's `Client` over `StreamableHTTPClientTransport`, used the way a stock SDK
// user would. Prints exactly one JSON line on stdout.
//
// Usage (install once with `npm ci` in this directory):
//   node client.mjs [--url URL] [--token T] [--timeout SECS] <command> ...
//
//   list                         -> {"tools": [Tool, ...], "pages": n}   (follows nextCursor)
//   call NAME JSON_ARGS          -> {"isError", "content", "structuredContent", "meta"}
//   progress NAME JSON_ARGS      -> {"progress": [1, 2, 3], "isError", "content"}
//                                   (the call carries _meta.progressToken via `onprogress`)
//   list-changed ADMIN_URL ADMIN_TOKEN PROJECT_ID
//                                -> {"listChanged": true|false}
//      waits until the GET stream is open, PATCHes the first listed tool's
//      description through the admin API and waits up to 10 s for
//      notifications/tools/list_changed
//   cancel NAME JSON_ARGS        -> {"cancelled": true, "error": "...", "elapsedMs": n, "cancelStatus": 202}
//      aborts the call 300 ms after sending it through an AbortController
//      signal (the SDK rejects the call and sends notifications/cancelled;
//      cancelStatus is the HTTP status that POST got, null if none within 5 s;
//      what the server did with the cancelled call's own POST goes to stderr);
//      if the call finished first: {"cancelled": false, "isError", "content"}
//
//   --url     defaults to $MCP_URL (e.g. http://127.0.0.1:8080/mcp)
//   --token   defaults to $MCP_TOKEN; sent as "Authorization: Bearer <token>",
//             omitted when empty
//   --timeout request timeout in seconds (default 300; the SDK's own is 60)
//
// Exit codes: 0 when the command ran, including when the server answered a
// JSON-RPC error (printed as {"error": {"code", "message"}}; error.data goes to
// stderr); 2 on anything unexpected (stack on stderr), including connect /
// handshake failures and HTTP errors the SDK raises as StreamableHTTPError;
// 64 on bad usage. Errors the SDK reports through `onerror` (protocol oddities
// that do not fail a request) are printed to stderr as "client.mjs: sdk
// onerror: ...". The session is ended with DELETE before exiting.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const MAX_PAGES = 1000;
const CANCEL_AFTER_MS = 300;
const LIST_CHANGED_WAIT_MS = 10_000;

class UsageError extends Error {}

const warn = (msg) => process.stderr.write(`client.mjs: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Resolves to `fallback` if `promise` does not settle within `ms`.
const within = (promise, ms, fallback) =>
  Promise.race([promise, sleep(ms).then(() => fallback)]);

function parseArgs(argv) {
  const opts = { url: process.env.MCP_URL, token: process.env.MCP_TOKEN ?? '', timeout: 300 };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') opts.url = value();
    else if (a === '--token') opts.token = value();
    else if (a === '--timeout') opts.timeout = Number(value());
    else if (a === '-h' || a === '--help') throw new UsageError('help');
    else if (a.startsWith('--') && rest.length === 0) throw new UsageError(`unknown option ${a}`);
    else rest.push(a);
  }
  if (!opts.url) throw new UsageError('--url (or MCP_URL) is required');
  if (!(opts.timeout > 0)) throw new UsageError('--timeout must be a positive number of seconds');
  const [command, ...pos] = rest;
  const arity = { list: 0, call: 2, progress: 2, cancel: 2, 'list-changed': 3 };
  if (!(command in arity)) throw new UsageError(`unknown command ${JSON.stringify(command ?? '')}`);
  if (pos.length !== arity[command]) throw new UsageError(`${command} takes ${arity[command]} arguments`);
  opts.command = command;
  opts.pos = pos;
  if (['call', 'progress', 'cancel'].includes(command)) {
    opts.name = pos[0];
    let parsed;
    try {
      parsed = JSON.parse(pos[1]);
    } catch (e) {
      throw new UsageError(`JSON_ARGS is not valid JSON: ${e.message}`);
    }
    if (parsed !== null && (typeof parsed !== 'object' || Array.isArray(parsed)))
      throw new UsageError('JSON_ARGS must be a JSON object or null');
    opts.arguments = parsed ?? undefined;
  }
  return opts;
}

// A fetch wrapper handed to the transport: it lets the commands see when the
// GET stream is open and await the POST carrying notifications/cancelled, so
// that closing the transport cannot abort it in flight. It does not change
// what the SDK sends or receives.
function observingFetch() {
  const state = {
    getStreamOpen: null,
    cancelPosts: [],
    callResponses: [],
  };
  let openGet;
  state.getStreamOpen = new Promise((r) => (openGet = r));
  state.fetch = async (input, init = {}) => {
    const method = (init.method ?? 'GET').toUpperCase();
    const body = typeof init.body === 'string' ? init.body : '';
    const started = Date.now();
    const promise = fetch(input, init);
    if (method === 'POST' && body.includes('"notifications/cancelled"')) {
      state.cancelPosts.push(promise.then((r) => r.status, (e) => `failed: ${e?.message ?? e}`));
    }
    if (method === 'POST' && body.includes('"tools/call"')) {
      // Keep a copy of the answer to a tools/call for the cancel diagnostics.
      state.callResponses.push(
        promise.then(
          (r) => {
            const head = `HTTP ${r.status} ${r.headers.get('content-type') ?? ''} after ${Date.now() - started} ms`;
            return r.clone().text().then(
              (t) => `${head}, body ended after ${Date.now() - started} ms: ${JSON.stringify(t)}`,
              (e) => `${head}, body failed after ${Date.now() - started} ms: ${e?.message ?? e}`,
            );
          },
          (e) => `failed after ${Date.now() - started} ms: ${e?.message ?? e}`,
        ),
      );
    }
    const res = await promise;
    if (method === 'GET') {
      if (res.ok) openGet({ status: res.status });
      else openGet({ status: res.status, failed: true });
    }
    return res;
  };
  return state;
}

function errorDoc(e) {
  if (e.data !== undefined) warn(`JSON-RPC error data: ${JSON.stringify(e.data)}`);
  // McpError prefixes its message with "MCP error <code>: "; report the server's.
  const prefix = `MCP error ${e.code}: `;
  const message = e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
  return { error: { code: e.code, message } };
}

function callDoc(result) {
  return {
    isError: Boolean(result.isError),
    content: result.content ?? [],
    structuredContent: result.structuredContent ?? null,
    meta: result._meta ?? null,
  };
}

async function list(client, reqOpts) {
  const tools = [];
  const seen = new Set();
  let cursor;
  for (let pages = 1; pages <= MAX_PAGES; pages++) {
    const page = await client.listTools(cursor === undefined ? undefined : { cursor }, reqOpts);
    tools.push(...page.tools);
    cursor = page.nextCursor;
    if (cursor === undefined || cursor === null) return { tools, pages };
    if (seen.has(cursor)) throw new Error(`server repeated nextCursor ${JSON.stringify(cursor)}: pagination loop`);
    seen.add(cursor);
  }
  throw new Error(`tools/list did not finish within ${MAX_PAGES} pages`);
}

async function call(client, opts, reqOpts) {
  return callDoc(await client.callTool({ name: opts.name, arguments: opts.arguments }, undefined, reqOpts));
}

async function progress(client, opts, reqOpts) {
  const values = [];
  const result = await client.callTool({ name: opts.name, arguments: opts.arguments }, undefined, {
    ...reqOpts,
    onprogress: (p) => {
      warn(`progress ${JSON.stringify(p)}`);
      values.push(p.progress);
    },
  });
  return { progress: values, isError: Boolean(result.isError), content: result.content ?? [] };
}

async function listChanged(client, obs, opts, reqOpts) {
  const [adminUrl, adminToken, projectId] = opts.pos;
  let notified;
  const notification = new Promise((r) => (notified = r));
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => notified(true));
  if (!client.getServerCapabilities()?.tools?.listChanged)
    warn('the server does not advertise capabilities.tools.listChanged');

  const first = await client.listTools(undefined, reqOpts);
  if (first.tools.length === 0) throw new Error('the project has no tool to change');
  const name = first.tools[0].name;

  // The SDK opens the GET stream by itself after `notifications/initialized`;
  // change the tool only once it is open, or the notification has nowhere to go.
  const get = await within(obs.getStreamOpen, 5000, null);
  if (get === null) warn('the GET stream did not open within 5 s');
  else if (get.failed) warn(`the GET stream was refused: HTTP ${get.status}`);

  const url = `${adminUrl.replace(/\/$/, '')}/v1/projects/${encodeURIComponent(projectId)}/tools/${encodeURIComponent(name)}`;
  const res = await fetch(url, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ description: `changed ${new Date().toISOString()}` }),
  });
  if (!res.ok) throw new Error(`PATCH ${url}: HTTP ${res.status} ${await res.text()}`);
  return { listChanged: await within(notification, LIST_CHANGED_WAIT_MS, false) };
}

async function cancel(client, obs, opts, reqOpts) {
  const controller = new AbortController();
  const started = Date.now();
  const timer = setTimeout(() => controller.abort(new Error(`aborted by client.mjs after ${CANCEL_AFTER_MS} ms`)), CANCEL_AFTER_MS);
  let doc;
  try {
    const result = await client.callTool({ name: opts.name, arguments: opts.arguments }, undefined, {
      ...reqOpts,
      signal: controller.signal,
    });
    doc = { cancelled: false, isError: Boolean(result.isError), content: result.content ?? [] };
  } catch (e) {
    if (!controller.signal.aborted) throw e;
    doc = { cancelled: true, error: String(e?.message ?? e), elapsedMs: Date.now() - started };
  } finally {
    clearTimeout(timer);
  }
  if (doc.cancelled) {
    // Let notifications/cancelled reach the server before the transport closes,
    // then report (stderr) what the server did with the cancelled request's POST.
    const statuses = await within(Promise.all(obs.cancelPosts), 5000, null);
    warn(`notifications/cancelled POST: ${statuses === null ? 'no answer within 5 s' : `HTTP ${statuses.join(', ')}`}`);
    doc.cancelStatus = typeof statuses?.[0] === 'number' ? statuses[0] : null;
    for (const r of obs.callResponses) {
      const what = await within(r, 5000, 'no answer or body still open after 5 s');
      warn(`cancelled tools/call POST: ${what}`);
    }
  }
  return doc;
}

async function run(opts) {
  const headers = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};
  const obs = observingFetch();
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    requestInit: { headers },
    fetch: obs.fetch,
  });
  const client = new Client({ name: 'tengine-ts-client', version: '0.1.0' });
  let closing = false;
  client.onerror = (e) => {
    // close() aborts the open GET stream; that is not worth reporting.
    if (closing && /AbortError|aborted/.test(String(e?.message ?? e))) return;
    warn(`sdk onerror: ${e?.message ?? e}`);
  };
  const reqOpts = { timeout: opts.timeout * 1000 };
  await client.connect(transport, reqOpts);
  try {
    switch (opts.command) {
      case 'list':
        return await list(client, reqOpts);
      case 'call':
        return await call(client, opts, reqOpts);
      case 'progress':
        return await progress(client, opts, reqOpts);
      case 'list-changed':
        return await listChanged(client, obs, opts, reqOpts);
      case 'cancel':
        return await cancel(client, obs, opts, reqOpts);
    }
    throw new Error(`unreachable: ${opts.command}`);
  } catch (e) {
    if (e instanceof McpError) return errorDoc(e);
    throw e;
  } finally {
    // Client.close() alone does not end the session; DELETE it first, as the
    // Python SDK does on exit.
    try {
      await transport.terminateSession();
    } catch (e) {
      warn(`DELETE of the session failed: ${e?.message ?? e}`);
    }
    closing = true;
    await client.close();
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    const usage = [
      'usage: node client.mjs [--url URL] [--token T] [--timeout SECS] <command>',
      '  list | call NAME JSON_ARGS | progress NAME JSON_ARGS | cancel NAME JSON_ARGS',
      '  list-changed ADMIN_URL ADMIN_TOKEN PROJECT_ID',
    ].join('\n');
    process.stderr.write(e.message === 'help' ? `${usage}\n` : `client.mjs: ${e.message}\n${usage}\n`);
    return e.message === 'help' ? 0 : 64;
  }
  let doc;
  try {
    doc = await run(opts);
  } catch (e) {
    process.stderr.write(`${e?.stack ?? e}\n`);
    if (e?.cause) process.stderr.write(`cause: ${e.cause?.stack ?? e.cause}\n`);
    return 2;
  }
  process.stdout.write(`${JSON.stringify(doc)}\n`);
  return 0;
}

// Exit explicitly: a lingering socket must not keep the process alive.
main().then(
  (code) => process.stdout.write('', () => process.exit(code)),
  (e) => {
    process.stderr.write(`${e?.stack ?? e}\n`);
    process.exit(2);
  },
);
