#!/usr/bin/env node
// Registers the fixture tools of tools.json in a Tengine project.
//
//   TENGINE_ADMIN_TOKEN=… node register-tools.mjs ADMIN_URL PROJECT_ID UPSTREAM_URL [tools.json]
//
// `${UPSTREAM}` in tools.json is replaced by UPSTREAM_URL (an origin such as
// http://127.0.0.1:18709). A tool that already exists is replaced (PUT).
// If the server does not know a field yet (e.g. `response_mode` before the
// pass-through mode is built), the tool is registered without it and a warning
// is printed: the scenario that needs it will then fail on its real check.
// No dependencies.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [adminUrl, projectId, upstream, file] = process.argv.slice(2);
const token = process.env.TENGINE_ADMIN_TOKEN;
if (!adminUrl || !projectId || !upstream || !token) {
  console.error('usage: TENGINE_ADMIN_TOKEN=… node register-tools.mjs ADMIN_URL PROJECT_ID UPSTREAM_URL [tools.json]');
  process.exit(2);
}
const path = file ?? join(dirname(fileURLToPath(import.meta.url)), 'tools.json');
const tools = JSON.parse(readFileSync(path, 'utf8').replaceAll('${UPSTREAM}', upstream));

const base = `${adminUrl.replace(/\/$/, '')}/v1/projects/${projectId}/tools`;
const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

async function send(method, url, spec) {
  const res = await fetch(url, { method, headers, body: JSON.stringify(spec) });
  return { status: res.status, text: await res.text() };
}

async function register(spec) {
  let res = await send('POST', base, spec);
  if (res.status === 409) res = await send('PUT', `${base}/${encodeURIComponent(spec.name)}`, spec);
  return res;
}

let failed = 0;
for (const original of tools) {
  let spec = { ...original };
  const dropped = [];
  for (;;) {
    const res = await register(spec);
    if (res.status >= 200 && res.status < 300) {
      const note = dropped.length ? ` (WITHOUT ${dropped.join(', ')}: not supported by this server yet)` : '';
      console.log(`registered ${spec.name}${note}`);
      break;
    }
    const unknown = /unknown field `([^`]+)`/.exec(res.text)?.[1];
    if (res.status === 400 && unknown && unknown in spec) {
      delete spec[unknown];
      dropped.push(unknown);
      continue;
    }
    console.error(`FAILED ${spec.name}: HTTP ${res.status} ${res.text}`);
    failed++;
    break;
  }
}
process.exit(failed ? 1 : 0);
