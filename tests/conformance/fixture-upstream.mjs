#!/usr/bin/env node
// Fixture upstream API for the MCP conformance suite's server scenarios.
//
//   node fixture-upstream.mjs [PORT]        (default 18709; 0 picks a free port)
//
// test_trigger_tool_change also needs FIXTURE_ADMIN_URL, FIXTURE_ADMIN_TOKEN and
// FIXTURE_PROJECT_ID: its endpoint changes a tool through Tengine's admin API.
//
// Serves on 127.0.0.1 the HTTP endpoints behind the fixture tools in tools.json
// (`test_simple_text`, `test_error_handling`, `test_image_content`, …). Each answers
// what the conformance scenario expects from the tool of the same name:
//
//   * text endpoints answer the expected text as text/plain, which Tengine's
//     default response mode turns into one text content block;
//   * /error answers HTTP 500, which Tengine turns into `isError: true`;
//   * content endpoints (image, audio, embedded resource, mixed) answer an MCP
//     CallToolResult as JSON. They pass only with a response mode that hands an
//     upstream CallToolResult through (`"response_mode": "mcp"` in tools.json);
//     in text mode the client sees that JSON as one text block.
//
// Multi round-trip tool calls (input-required-result-*, revision 2026-07-28):
// the /irr/* endpoints ask through Tengine's upstream input protocol
// (docs/upstream.md, "Asking the user for input"): an answer of type
// application/vnd.tengine.input-required+json with inputRequests and a state,
// and the client's answers back in the X-Tengine-Input header of the re-issued
// call. The 2025-11-25 sampling and elicitation fixtures ask the same way (Tengine
// relays the requests to the session's client on the call's stream);
// confirm_delete, multi_input and test_tool_with_task ask as (or before) tasks. The other Tasks
// fixtures (greet, slow_compute, failing_job, protocol_error_job) are ordinary
// endpoints: whether a call becomes a task is the tool's setting in tools.json.
// No dependencies; loopback only.
import http from 'node:http';

const port = Number(process.argv[2] ?? process.env.FIXTURE_PORT ?? 18709);

// 1x1 red pixel PNG.
const RED_PIXEL_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';

// A minimal WAV: 8 kHz mono 8-bit PCM, 8 samples of silence.
function tinyWav() {
  const samples = 8;
  const buf = Buffer.alloc(44 + samples);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + samples, 4);
  buf.write('WAVE', 8);
  buf.write('fmt ', 12);
  buf.writeUInt32LE(16, 16); // fmt chunk size
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(8000, 24); // sample rate
  buf.writeUInt32LE(8000, 28); // byte rate
  buf.writeUInt16LE(1, 32); // block align
  buf.writeUInt16LE(8, 34); // bits per sample
  buf.write('data', 36);
  buf.writeUInt32LE(samples, 40);
  buf.fill(128, 44); // 8-bit silence
  return buf.toString('base64');
}
const TINY_WAV = tinyWav();

// How often test_trigger_tool_change changed the tool list.
let toolChanges = 0;
// slow_compute calls that ran to their end, and those whose caller went away first.
const stats = { slowComputeCompleted: 0, slowComputeAborted: 0 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const text = (body, status = 200) => ({ status, type: 'text/plain; charset=utf-8', body });
const result = (value) => ({ status: 200, type: 'application/json', body: JSON.stringify(value) });

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  if (chunks.length === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return {};
  }
}

// Tengine's upstream input protocol (docs/upstream.md).
const ASK_TYPE = 'application/vnd.tengine.input-required+json';
const ask = (inputRequests, state) => ({
  status: 200,
  type: ASK_TYPE,
  body: JSON.stringify(state === undefined ? { inputRequests } : { inputRequests, state }),
});
// {inputResponses, state} of a re-issued call, or {} on the first round.
function inputOf(req) {
  const raw = req.headers['x-tengine-input'];
  if (!raw) return {};
  try {
    const input = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    return { responses: input.inputResponses ?? {}, state: input.state ?? undefined };
  } catch {
    return {};
  }
}
const elicit = (message, properties) => ({
  method: 'elicitation/create',
  params: { message, requestedSchema: { type: 'object', properties, required: Object.keys(properties) } },
});
const sample = (text, maxTokens) => ({
  method: 'sampling/createMessage',
  params: { messages: [{ role: 'user', content: { type: 'text', text } }], maxTokens },
});
const ROOTS = { method: 'roots/list', params: {} };
const accepted = (response) => (response?.action === 'accept' ? (response.content ?? {}) : null);
const sampled = (response) => response?.content?.text;

// METHOD path -> handler(request, parsed body) -> {status, type, body}
const routes = {
  // input-required-result-basic-elicitation, -result-type, -missing-input-response,
  // -ignore-extra-params, -validate-input
  'GET /irr/elicitation': (req) => {
    const name = accepted(inputOf(req).responses?.user_name)?.name;
    if (typeof name === 'string' && name) return text(`Hello, ${name}!`);
    return ask({ user_name: elicit('What is your name?', { name: { type: 'string' } }) });
  },
  // input-required-result-basic-sampling
  'GET /irr/sampling': (req) => {
    const answer = sampled(inputOf(req).responses?.capital_question);
    if (typeof answer === 'string') return text(`The model answered: ${answer}`);
    return ask({ capital_question: sample('What is the capital of France?', 100) });
  },
  // input-required-result-basic-list-roots
  'GET /irr/list-roots': (req) => {
    const roots = inputOf(req).responses?.client_roots?.roots;
    if (Array.isArray(roots)) return text(`Client roots: ${roots.map((r) => r?.uri ?? '?').join(', ')}`);
    return ask({ client_roots: ROOTS });
  },
  // input-required-result-request-state
  'GET /irr/request-state': (req) => {
    const { responses, state } = inputOf(req);
    const ok = accepted(responses?.confirm);
    if (state === 'rs-1' && ok) return text(`state-ok: the request state came back (ok=${ok.ok})`);
    return ask({ confirm: elicit('Please confirm', { ok: { type: 'boolean' } }) }, 'rs-1');
  },
  // input-required-result-multiple-input-requests
  'GET /irr/multiple-inputs': (req) => {
    const { responses, state } = inputOf(req);
    const name = accepted(responses?.user_name)?.name;
    const greeting = sampled(responses?.greeting);
    const roots = responses?.client_roots?.roots;
    if (state === 'multi-1' && name && greeting !== undefined && Array.isArray(roots)) {
      return text(`All inputs received: name ${name}, greeting ${greeting}, ${roots.length} root(s)`);
    }
    return ask(
      {
        user_name: elicit('What is your name?', { name: { type: 'string' } }),
        greeting: sample('Generate a greeting', 50),
        client_roots: ROOTS,
      },
      'multi-1',
    );
  },
  // input-required-result-multi-round
  'GET /irr/multi-round': (req) => {
    const { responses, state } = inputOf(req);
    const name = accepted(responses?.step1)?.name;
    const color = accepted(responses?.step2)?.color;
    if (state === 'round-2' && color) return text(`Multi-round complete: favorite color ${color}`);
    if (state === 'round-1' && name) {
      return ask({ step2: elicit('Step 2: What is your favorite color?', { color: { type: 'string' } }) }, 'round-2');
    }
    return ask({ step1: elicit('Step 1: What is your name?', { name: { type: 'string' } }) }, 'round-1');
  },
  // input-required-result-tampered-state (Tengine refuses an altered requestState itself)
  'GET /irr/tampered-state': (req) => {
    const { responses, state } = inputOf(req);
    if (state === 'ts-1' && accepted(responses?.confirm)) return text('state accepted');
    return ask({ confirm: elicit('Please confirm', { ok: { type: 'boolean' } }) }, 'ts-1');
  },
  // input-required-result-capability-check (Tengine passes on only what the client declared)
  'GET /irr/capabilities': (req) => {
    const { responses } = inputOf(req);
    if (responses && Object.keys(responses).length > 0) return text('capabilities: answered');
    return ask({
      user_name: elicit('What is your name?', { name: { type: 'string' } }),
      capital_question: sample('What is the capital of France?', 100),
    });
  },

  'GET /health': () => text('ok'),

  // tools-call-simple-text
  'GET /simple-text': () => text('This is a simple text response for testing.'),

  // tools-call-error: non-2xx becomes isError: true with this text in it.
  'GET /error': () => text('This tool intentionally returns an error for testing', 500),

  // tools-call-image (needs response_mode "mcp")
  'GET /image': () => result({ content: [{ type: 'image', data: RED_PIXEL_PNG, mimeType: 'image/png' }] }),

  // tools-call-audio (needs response_mode "mcp")
  'GET /audio': () => result({ content: [{ type: 'audio', data: TINY_WAV, mimeType: 'audio/wav' }] }),

  // tools-call-embedded-resource (needs response_mode "mcp")
  'GET /embedded-resource': () =>
    result({
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.',
          },
        },
      ],
    }),

  // tools-call-mixed-content (needs response_mode "mcp")
  'GET /mixed-content': () =>
    result({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: RED_PIXEL_PNG, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),

  // tools-call-with-logging: the three log notifications have to come from the
  // MCP server itself; the upstream only takes a while (2 x ~50 ms).
  'GET /with-logging': async () => {
    await sleep(100);
    return text('Tool with logging executed successfully');
  },

  // tools-call-with-progress: likewise, progress notifications are the server's.
  'GET /with-progress': async () => {
    await sleep(100);
    return text('Tool with progress executed successfully');
  },

  // tools-call-sampling / tools-call-elicitation / elicitation-sep1034-defaults /
  // elicitation-sep1330-enums: the API asks (Tengine's upstream input protocol);
  // in a 2025-11-25 session Tengine relays the request to the client on the
  // call's stream and re-issues the call with the answer.
  'POST /sampling': (req, body) => {
    const answer = inputOf(req).responses?.completion;
    if (answer) return text(`LLM response: ${answer.content?.text ?? JSON.stringify(answer)}`);
    return ask({ completion: sample(String(body.prompt ?? ''), 100) });
  },
  'POST /elicitation': (req, body) => {
    const answer = inputOf(req).responses?.user;
    if (answer) return text(`User response: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    return ask({
      user: {
        method: 'elicitation/create',
        params: {
          message: String(body.message ?? 'Please provide your information'),
          requestedSchema: {
            type: 'object',
            properties: {
              username: { type: 'string', description: "User's response" },
              email: { type: 'string', description: "User's email address" },
            },
            required: ['username', 'email'],
          },
        },
      },
    });
  },
  'GET /elicitation-sep1034-defaults': (req) => {
    const answer = inputOf(req).responses?.defaults;
    if (answer) return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    return ask({
      defaults: {
        method: 'elicitation/create',
        params: {
          message: 'Please review your information',
          requestedSchema: {
            type: 'object',
            properties: {
              name: { type: 'string', default: 'John Doe' },
              age: { type: 'integer', default: 30 },
              score: { type: 'number', default: 95.5 },
              status: { type: 'string', enum: ['active', 'inactive', 'pending'], default: 'active' },
              verified: { type: 'boolean', default: true },
            },
          },
        },
      },
    });
  },
  'GET /elicitation-sep1330-enums': (req) => {
    const answer = inputOf(req).responses?.enums;
    if (answer) return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    return ask({
      enums: {
        method: 'elicitation/create',
        params: {
          message: 'Please choose',
          requestedSchema: {
            type: 'object',
            properties: {
              untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
              titledSingle: {
                type: 'string',
                oneOf: [
                  { const: 'value1', title: 'First Option' },
                  { const: 'value2', title: 'Second Option' },
                  { const: 'value3', title: 'Third Option' },
                ],
              },
              legacyEnum: {
                type: 'string',
                enum: ['opt1', 'opt2', 'opt3'],
                enumNames: ['Option One', 'Option Two', 'Option Three'],
              },
              untitledMulti: { type: 'array', items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
              titledMulti: {
                type: 'array',
                items: {
                  anyOf: [
                    { const: 'value1', title: 'First Choice' },
                    { const: 'value2', title: 'Second Choice' },
                    { const: 'value3', title: 'Third Choice' },
                  ],
                },
              },
            },
          },
        },
      },
    });
  },

  // json-schema-2020-12: only listed, but answer a call anyway.
  'POST /json-schema-2020-12': (_req, body) => text(`Received: ${JSON.stringify(body)}`),

  // server-stateless (2026-07-28), sep-2575-http-server-no-independent-requests-on-stream:
  // the suite calls it declaring `elicitation` and checks that the response stream
  // carries no server-to-client request (2026-07-28 forbids them; an HTTP tool
  // could not send one anyway). Any successful result passes.
  'GET /streaming-elicitation': () =>
    text('Streaming elicitation test completed: no server-to-client request was sent'),

  // server-stateless (2026-07-28), sep-2575-server-no-log-without-loglevel: the
  // suite calls it without a log level and checks that no notifications/message
  // arrives (the log notifications are the MCP server's, not the upstream's).
  'GET /logging': () => text('Logging tool executed'),

  // http-custom-header-server-validation (2026-07-28): the tool's `region`
  // argument is mirrored into the `Mcp-Param-Region` header (x-mcp-header); the
  // header checks are the MCP server's. The upstream echoes what it got.
  'GET /x-mcp-header': (req) => text(`region=${new URL(req.url, 'http://x').searchParams.get('region')}`),

  // server-stateless (2026-07-28): test_trigger_tool_change is the suite's hook to
  // change the tool list while a subscriptions/listen stream is open. The upstream
  // really changes it: it PATCHes this very tool's description through Tengine's
  // admin API (FIXTURE_ADMIN_URL, FIXTURE_ADMIN_TOKEN, FIXTURE_PROJECT_ID), and
  // Tengine then announces notifications/tools/list_changed to the project's
  // listeners like after any other change.
  'POST /trigger-tool-change': async () => {
    const { FIXTURE_ADMIN_URL: admin, FIXTURE_ADMIN_TOKEN: token, FIXTURE_PROJECT_ID: project } = process.env;
    if (!admin || !token || !project) {
      return text('test_trigger_tool_change needs FIXTURE_ADMIN_URL, FIXTURE_ADMIN_TOKEN and FIXTURE_PROJECT_ID', 500);
    }
    toolChanges += 1;
    const url = `${admin.replace(/\/$/, '')}/v1/projects/${project}/tools/test_trigger_tool_change`;
    const res = await fetch(url, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        description: `Changes the tool list (this description) through the admin API; changed ${toolChanges} time(s) (conformance: server-stateless).`,
      }),
    });
    if (!res.ok) return text(`admin API answered HTTP ${res.status}: ${await res.text()}`, 502);
    return text(`tool list changed (${toolChanges})`);
  },

  // server-stateless (2026-07-28), sep-2575-server-rejects-undeclared-capability:
  // the tool is registered with `client_capabilities: {"sampling": {}}`, so Tengine
  // refuses a request that does not declare sampling (-32021, HTTP 400) before it
  // reaches this endpoint; a request that declares it gets this text.
  'GET /missing-capability': () => text('test_missing_capability: the client declared sampling'),

  // tasks-* (Tasks extension): greet is task_support "never", always answered at once.
  'GET /greet': (req) => text(`Hello, ${new URL(req.url, 'http://x').searchParams.get('name')}!`),

  // tasks-*: slow_compute sleeps `seconds` and answers. The 60 s calls are cancelled
  // by the suite (tasks/cancel): Tengine then aborts the request in flight, which
  // this endpoint sees as a connection closed before it answered (logged, and
  // counted in /stats).
  'POST /slow-compute': async (req, body) => {
    const seconds = Number(body.seconds ?? 0);
    const label = body.label ?? '';
    const started = Date.now();
    let onClose;
    const closed = new Promise((resolve) => {
      onClose = () => resolve(true);
      req.socket.once('close', onClose);
    });
    const aborted = await Promise.race([sleep(Math.max(0, seconds) * 1000).then(() => false), closed]);
    req.socket.removeListener('close', onClose);
    if (aborted) {
      stats.slowComputeAborted += 1;
      console.error(`slow_compute ${label}: the caller closed the connection after ${Date.now() - started} ms of ${seconds} s`);
      return null;
    }
    stats.slowComputeCompleted += 1;
    return text(`slow_compute ${label}: done after ${seconds} s`);
  },

  // tasks-*: failing_job's API refuses the call (HTTP 422): a tool-level error, so
  // the task ends `completed` with `isError: true`.
  'POST /failing-job': async () => {
    await sleep(200);
    return text('failing_job: this job always fails', 422);
  },

  // tasks-lifecycle: protocol_error_job's API closes the connection without an
  // answer (a transport failure, not an API answer), so the task ends `failed`
  // with a JSON-RPC error.
  'POST /protocol-error-job': (req) => {
    req.socket.destroy();
    return null;
  },

  // tasks-mrtr-input, tasks-dispatch-and-envelope: tasks whose API asks for input
  // once under way (after 1 s, past ingress.task_input_window_ms): the task is
  // input_required until tasks/update has answered every request, then the call
  // goes on with the answers.
  'POST /confirm-delete': async (req, body) => {
    const { responses } = inputOf(req);
    if (accepted(responses?.confirm)) return text(`confirm_delete: deleted ${body.filename ?? '?'}`);
    if (responses?.confirm) return text(`confirm_delete: ${body.filename ?? '?'} kept (not confirmed)`);
    await sleep(1000);
    return ask({ confirm: elicit(`Delete ${body.filename ?? 'the file'}?`, { confirm: { type: 'boolean' } }) }, 'delete');
  },
  'POST /multi-input': async (req) => {
    const { responses } = inputOf(req);
    if (responses?.name && responses?.confirm) return text('multi_input: both answers received');
    await sleep(1000);
    return ask(
      {
        name: elicit('Your name?', { name: { type: 'string' } }),
        confirm: elicit('Proceed?', { confirm: { type: 'boolean' } }),
      },
      'multi',
    );
  },
  // tasks-mrtr-composition: asks at once (within ingress.task_input_window_ms), so
  // the first call answers an InputRequiredResult; the re-issued call with the
  // answer becomes the task, whose result greets the name.
  'POST /tool-with-task': (req) => {
    const name = accepted(inputOf(req).responses?.user_name)?.name;
    if (typeof name === 'string' && name) return text(`Hello, ${name}!`);
    return ask({ user_name: elicit('What is your name?', { name: { type: 'string' } }) }, 'with-task');
  },

  // What the tasks endpoints saw (for a person checking that cancellation reached the API).
  'GET /stats': () => result(stats),

  // server-sse-polling: the test_reconnection tool. Closing the SSE stream
  // mid-call is the MCP server's job; the upstream just takes a moment.
  'GET /reconnection': async () => {
    await sleep(500);
    return text('Reconnection test completed');
  },
};

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const route = routes[`${req.method} ${path}`];
  try {
    const body = req.method === 'POST' ? await readJson(req) : {};
    const out = route ? await route(req, body) : text(`no fixture route for ${req.method} ${path}`, 404);
    // null: the route closed the connection (or saw it closed) and answers nothing.
    if (out === null) return;
    res.writeHead(out.status, { 'content-type': out.type, 'content-length': Buffer.byteLength(out.body) });
    res.end(out.body);
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`fixture error: ${err?.message ?? err}`);
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`fixture-upstream listening on http://127.0.0.1:${server.address().port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
