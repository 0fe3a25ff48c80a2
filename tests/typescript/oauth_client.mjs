#!/usr/bin/env node
// MCP authorization (OAuth 2.1) with the official TypeScript SDK's OAuth client
// (@modelcontextprotocol/sdk 1.x, pinned in package.json): its
// StreamableHTTPClientTransport with an `authProvider` discovers the metadata
// from the 401, registers (dynamic client registration, or a Client ID Metadata
// Document URL as its client_id), runs PKCE and, after
// `finishAuth(code)`, exchanges the code; on a 401 with a refresh token it
// refreshes. Only the person is played here: `redirectToAuthorization` hands
// the URL to a "browser" (fetch, following redirects to the customer's login
// page and back, approving on the consent page by posting its form with the
// CSRF cookie, as a browser without JavaScript would).
//
// Usage: node oauth_client.mjs --url MCP_URL --tool NAME --arguments JSON [--client-metadata-url URL]
// Prints one JSON line: {"tools", "call": {"isError", "content"}, "refreshed",
//   "access_token", "refresh_token", "client_id"}; exit 2 on anything unexpected.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomBytes } from 'node:crypto';

// Never contacted: the browser stops at the redirect to it.
const REDIRECT_URI = 'http://127.0.0.1:53683/callback';

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

class MemoryProvider {
  constructor(clientMetadataUrl) {
    // When set and the server supports it, the SDK uses this URL as its client_id (CIMD).
    if (clientMetadataUrl) this.clientMetadataUrl = clientMetadataUrl;
    this.issued = [];
    this.authorizationUrl = undefined;
    this.expectedState = undefined;
  }
  get redirectUrl() { return REDIRECT_URI; }
  get clientMetadata() {
    return {
      client_name: 'Tengine test client (TypeScript SDK)',
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  state() {
    this.expectedState = randomBytes(16).toString('hex');
    return this.expectedState;
  }
  clientInformation() { return this.client; }
  saveClientInformation(client) { this.client = client; }
  tokens() { return this.current; }
  saveTokens(tokens) { this.current = tokens; this.issued.push(tokens); }
  redirectToAuthorization(url) { this.authorizationUrl = url; }
  saveCodeVerifier(verifier) { this.verifier = verifier; }
  codeVerifier() { return this.verifier; }
}

/** The browser: authorization URL -> login page -> callback (consent page) -> approve -> code. */
async function approve(authorizationUrl, expectedState) {
  let response = await fetch(authorizationUrl, { redirect: 'manual' });
  for (let hops = 0; [302, 303].includes(response.status) && hops < 5; hops++) {
    response = await fetch(new URL(response.headers.get('location'), response.url), { redirect: 'manual' });
  }
  if (response.status !== 200) throw new Error(`expected the consent page, got ${response.status}: ${await response.text()}`);
  const cookie = (response.headers.get('set-cookie') || '').split(';')[0];
  const page = await response.text();
  const unescape = (s) => s.replaceAll('&quot;', '"').replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&');
  const action = unescape(page.match(/<form[^>]*action="([^"]*)"/)[1]);
  const form = new URLSearchParams();
  for (const tag of page.match(/<input[^>]*>/g) || []) {
    const name = tag.match(/name="([^"]*)"/);
    const value = tag.match(/value="([^"]*)"/);
    if (name && value) form.set(unescape(name[1]), unescape(value[1]));
  }
  form.set('decision', 'approve');
  const answer = await fetch(action, { method: 'POST', body: form, redirect: 'manual', headers: { cookie } });
  if (answer.status !== 303) throw new Error(`consent answered ${answer.status}: ${await answer.text()}`);
  const back = new URL(answer.headers.get('location'));
  if (back.searchParams.get('state') !== expectedState) throw new Error(`state mismatch: ${back}`);
  if (!back.searchParams.get('iss')) throw new Error(`no iss (RFC 9207): ${back}`);
  return back.searchParams.get('code');
}

async function main() {
  const { url, tool, arguments: rawArguments = '{}', 'client-metadata-url': clientMetadataUrl } = args();
  const provider = new MemoryProvider(clientMetadataUrl);
  const connect = async () => {
    const client = new Client({ name: 'tengine-oauth-it', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }));
    return client;
  };
  let client;
  try {
    client = await connect();
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
    const code = await approve(provider.authorizationUrl, provider.expectedState);
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    await transport.finishAuth(code);
    client = await connect();
  }
  const out = {};
  out.tools = (await client.listTools()).tools.map((t) => t.name);
  const result = await client.callTool({ name: tool, arguments: JSON.parse(rawArguments) });
  out.call = { isError: Boolean(result.isError), content: result.content };
  await client.close();

  // An access token the server no longer takes: on the 401 the SDK refreshes.
  const before = provider.issued.length;
  provider.current = { ...provider.current, access_token: 'tng_mst_expired' };
  client = await connect();
  const again = await client.callTool({ name: tool, arguments: JSON.parse(rawArguments) });
  out.refreshed = provider.issued.length > before && !again.isError;
  await client.close();
  out.access_token = provider.current.access_token;
  out.refresh_token = provider.current.refresh_token;
  out.client_id = provider.client.client_id;
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(2);
});
