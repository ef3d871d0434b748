// A real, unmodified MCP client (the official TypeScript SDK) logging in to a Gatehouse-protected
// server: discovery from the 401, dynamic registration, PKCE, the browser step through the real
// login and consent pages, token, tool calls, refresh, and step-up on 403 insufficient_scope.
//
// usage: node sdk-client.mjs MCP_URL
// env:   GH_USER, GH_PASSWORD; GH_BROWSER=fetch (scripted, default) | chromium (headless, real)
// Prints one JSON line per step on stdout; exits non-zero on any failure.
import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError, auth } from '@modelcontextprotocol/sdk/client/auth.js';

const mcpUrl = new URL(process.argv[2]);
const user = process.env.GH_USER ?? 'dev';
const password = process.env.GH_PASSWORD ?? '';
const mode = process.env.GH_BROWSER ?? 'fetch';
const log = (o) => console.log(JSON.stringify(o));

// The loopback redirect target (what a native app listens on).
let codeWaiter = null;
const callback = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://127.0.0.1');
  res.end('You can close this window.');
  if (u.pathname === '/callback' && codeWaiter) {
    const w = codeWaiter;
    codeWaiter = null;
    w({ code: u.searchParams.get('code'), error: u.searchParams.get('error'), iss: u.searchParams.get('iss'), state: u.searchParams.get('state') });
  }
});
await new Promise((r) => callback.listen(0, '127.0.0.1', r));
const redirectUrl = `http://127.0.0.1:${callback.address().port}/callback`;

// ---- the browser step ----------------------------------------------------------------------
const jar = new Map();
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
async function fetchPage(url, init = {}) {
  const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: cookieHeader() } });
  for (const c of r.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
  }
  return { status: r.status, location: r.headers.get('location'), body: await r.text() };
}
const field = (html, name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))?.[1];

async function fetchBrowser(authUrl) {
  let page = await fetchPage(authUrl);
  if (page.status >= 300 && page.status < 400) return fetch(page.location); // remembered consent
  const form = { pending: field(page.body, 'pending'), csrf: field(page.body, 'csrf') };
  const post = (path, data) => fetchPage(new URL(path, authUrl), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ ...form, ...data }).toString(),
  });
  if (page.body.includes('type="password"')) {
    page = await post('/login', { username: user, password });
    if (page.status >= 300 && page.status < 400) return fetch(page.location);
    if (page.status !== 200) throw new Error(`login failed: ${page.status}`);
  }
  page = await post('/consent', { decision: 'approve' });
  if (!page.location) throw new Error(`consent did not redirect: ${page.status} ${page.body.slice(0, 200)}`);
  await fetch(page.location);
}

let chromium = null;
async function chromiumBrowser(authUrl) {
  if (!chromium) {
    const { chromium: pw } = await import('playwright-core');
    const browser = await pw.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
    chromium = { browser, page: await (await browser.newContext()).newPage() };
  }
  const { page } = chromium;
  const reached = page.waitForURL((u) => u.toString().startsWith(redirectUrl), { timeout: 20000 });
  await page.goto(authUrl.toString());
  if (!page.url().startsWith(redirectUrl)) {
    if (await page.locator('input[type=password]').count()) {
      await page.fill('#username', user);
      await page.fill('#password', password);
      await Promise.all([page.waitForLoadState(), page.click('button[type=submit]')]);
    }
    if (!page.url().startsWith(redirectUrl)) {
      const shot = process.env.GH_SCREENSHOT;
      if (shot) await page.screenshot({ path: shot, fullPage: true });
      await page.click('button[value=approve]');
    }
  }
  await reached;
}

// ---- the SDK's OAuth client provider (in-memory storage) -----------------------------------------
const store = { client: undefined, tokens: undefined, verifier: undefined, refreshes: 0, authorizations: 0 };
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: 'Gatehouse test (TypeScript SDK)',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    };
  },
  // A Client ID Metadata Document URL (https) when GH_CIMD_URL is set: the SDK then uses it as
  // the client_id instead of registering, where the server supports it.
  ...(process.env.GH_CIMD_URL ? { clientMetadataUrl: process.env.GH_CIMD_URL } : {}),
  clientInformation: () => store.client,
  saveClientInformation: (c) => { store.client = c; log({ step: 'registered', client_id: c.client_id }); },
  tokens: () => store.tokens,
  saveTokens: (t) => {
    if (store.tokens && t.refresh_token && !codeInFlight) store.refreshes += 1;
    store.tokens = t;
  },
  saveCodeVerifier: (v) => { store.verifier = v; },
  codeVerifier: () => store.verifier,
  redirectToAuthorization: async (url) => {
    store.authorizations += 1;
    log({ step: 'authorize', client_id: url.searchParams.get('client_id'), scope: url.searchParams.get('scope'), resource: url.searchParams.get('resource'), pkce: url.searchParams.get('code_challenge_method') });
    const got = new Promise((r) => { codeWaiter = r; });
    await (mode === 'chromium' ? chromiumBrowser(url) : fetchBrowser(url));
    pendingCode = await got;
  },
};
let pendingCode = null;
let codeInFlight = false;

// After the SDK sent the user to the authorization page: hand it the code from the callback.
async function completeAuth(transport) {
  const { code, iss } = pendingCode;
  pendingCode = null;
  log({ step: 'callback', iss });
  codeInFlight = true;
  await transport.finishAuth(code);
  codeInFlight = false;
}

async function withAuth(transport, fn) {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof UnauthorizedError) || !pendingCode) throw e;
    await completeAuth(transport);
    return fn();
  }
}

// The app watches challenges through the SDK's `fetch` option (no SDK change).
let lastChallenge = null;
const watchingFetch = async (url, init) => {
  const r = await fetch(url, init);
  if (r.status === 403) lastChallenge = r.headers.get('www-authenticate');
  return r;
};
const challengeScope = () => lastChallenge?.match(/scope="([^"]*)"/)?.[1];

async function connect() {
  const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: watchingFetch });
  const client = new Client({ name: 'gatehouse-sdk-test', version: '1.0.0' });
  try {
    await client.connect(transport);
    return { client, transport };
  } catch (e) {
    if (!(e instanceof UnauthorizedError) || !pendingCode) throw e;
    await completeAuth(transport);
    const t2 = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: watchingFetch });
    const c2 = new Client({ name: 'gatehouse-sdk-test', version: '1.0.0' });
    await c2.connect(t2);
    return { client: c2, transport: t2 };
  }
}

try {
  let { client, transport } = await connect();
  const tools = (await client.listTools()).tools.map((t) => t.name).sort();
  log({ step: 'tools', tools });
  const who = await client.callTool({ name: 'whoami', arguments: {} });
  log({ step: 'whoami', result: who.structuredContent, scope: store.tokens?.scope });

  // Refresh: the access token goes bad; the SDK refreshes with the refresh token on the 401.
  store.tokens = { ...store.tokens, access_token: 'expired-or-revoked' };
  await client.close();
  ({ client, transport } = await connect());
  const again = await client.callTool({ name: 'whoami', arguments: {} });
  log({ step: 'refreshed', refreshes: store.refreshes, subject: again.structuredContent?.subject });

  // Step-up: notes_add needs notes:write; the 403 challenge leads to a new authorization with the
  // challenged scopes. SDK 1.32 answers a 403 by refreshing when it holds a refresh token, which
  // can never widen the scope (the AS rightly refuses), so the app starts the new authorization
  // itself through the SDK's own auth().
  const before = store.authorizations;
  const addNote = () => client.callTool({ name: 'notes_add', arguments: { text: 'hello from the SDK' } });
  let added;
  try {
    added = await withAuth(transport, addNote);
  } catch (e) {
    const scope = challengeScope();
    if (!String(e).includes('403') || !scope) throw e;
    log({ step: 'challenge', scope });
    store.tokens = undefined;
    const r = await auth(provider, { serverUrl: mcpUrl, scope });
    if (r !== 'REDIRECT' || !pendingCode?.code) throw new Error(`step-up authorization failed: ${r} ${JSON.stringify(pendingCode)}`);
    const { code } = pendingCode;
    pendingCode = null;
    codeInFlight = true;
    await auth(provider, { serverUrl: mcpUrl, scope, authorizationCode: code });
    codeInFlight = false;
    await client.close();
    ({ client, transport } = await connect());
    added = await addNote();
  }
  log({ step: 'stepped_up', authorizations: store.authorizations - before, notes: added.structuredContent?.notes, scope: store.tokens?.scope, isError: added.isError ?? false });
  await client.close();
  log({ step: 'done', ok: true });
} catch (e) {
  log({ step: 'error', message: String(e?.stack ?? e) });
  process.exitCode = 1;
} finally {
  callback.close();
  if (chromium) await chromium.browser.close();
  process.exit(process.exitCode ?? 0);
}
