// Token-endpoint throughput: authorization-code exchange and refresh-token rotation, Gatehouse vs
// oidc-provider, measured in the same run on this machine with the same load generator
// (autocannon). Every request uses a distinct, valid code or refresh token prepared beforehand, so
// each one does the real work (lookup, single-use marking, PKCE, signing, storing the rotated
// token). Prints JSON lines, then `code_exchange/oidc-provider=R refresh/oidc-provider=R`.
//
// usage: node token-endpoint.mjs GATEHOUSE_ISSUER OIDC_PROVIDER_ISSUER
// env:   N (prepared requests per measurement, default 40000), CONNECTIONS (default 16),
//        DURATION (seconds per measurement with wrk, default 2), GEN=autocannon to force it
import autocannon from 'autocannon';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

const [ghIssuer, opIssuer] = process.argv.slice(2);
const N = Number(process.env.N ?? 40000);
// With wrk: seconds each measurement lasts (it must end before the N prepared requests do).
const DURATION = Number(process.env.DURATION ?? 2);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 16);
const REDIRECT = 'http://127.0.0.1:9/cb';
const b64url = (b) => b.toString('base64url');
const verifier = b64url(randomBytes(32));
const challenge = b64url(createHash('sha256').update(verifier).digest());

// A tiny cookie-keeping browser.
function browser() {
  const jar = new Map();
  return async (url, init = {}) => {
    const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
    }
    return { status: r.status, location: r.headers.get('location'), body: await r.text() };
  };
}
const form = (o) => ({ method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(o).toString() });
const codeOf = (loc) => new URL(loc).searchParams.get('code');

async function pool(n, width, fn) {
  const out = [];
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) {
      next += 1;
      out.push(await fn());
    }
  }));
  return out;
}

async function gatehouse(issuer) {
  const resource = `${issuer}/mcp`;
  const reg = await (await fetch(`${issuer}/register`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'bench', redirect_uris: [REDIRECT], grant_types: ['authorization_code', 'refresh_token'], token_endpoint_auth_method: 'none', application_type: 'native' }),
  })).json();
  const clientId = reg.client_id;
  const authUrl = `${issuer}/authorize?${new URLSearchParams({ response_type: 'code', client_id: clientId, redirect_uri: REDIRECT, code_challenge: challenge, code_challenge_method: 'S256', scope: 'mcp:basic', resource })}`;
  const go = browser();
  const login = await go(authUrl);
  const f = (name) => login.body.match(new RegExp(`name="${name}" value="([^"]*)"`))[1];
  const hidden = { pending: f('pending'), csrf: f('csrf') };
  await go(`${issuer}/login`, form({ ...hidden, username: process.env.GATEHOUSE_DEV_USER, password: process.env.GATEHOUSE_DEV_PASSWORD }));
  await go(`${issuer}/consent`, form({ ...hidden, decision: 'approve' }));
  // Consent is remembered now: every authorization returns a code at once.
  const code = async () => codeOf((await go(authUrl)).location);
  return { name: 'gatehouse', tokenUrl: `${issuer}/token`, clientId, resource, code };
}

async function oidcProvider(issuer) {
  const resource = `${issuer}/mcp`;
  const authUrl = `${issuer}/auth?${new URLSearchParams({ response_type: 'code', client_id: 'bench', redirect_uri: REDIRECT, code_challenge: challenge, code_challenge_method: 'S256', scope: 'mcp:basic', resource })}`;
  const go = browser();
  // Its development login and consent, once; then the session and grant make it answer at once.
  let r = await go(authUrl);
  for (let i = 0; i < 10 && !r.location?.startsWith(REDIRECT); i += 1) {
    const next = new URL(r.location, issuer).toString();
    r = await go(next);
    if (r.status === 200) {
      const action = r.body.match(/action="([^"]+)"/)[1];
      const fields = Object.fromEntries([...r.body.matchAll(/name="([^"]+)"(?: value="([^"]*)")?/g)].map((m) => [m[1], m[2] ?? '']));
      if ('login' in fields) { fields.login = 'bench-user'; fields.password = 'x'; }
      r = await go(new URL(action, issuer).toString(), form(fields));
    }
  }
  const code = async () => {
    let x = await go(authUrl);
    for (let i = 0; i < 5 && x.location && !x.location.startsWith(REDIRECT); i += 1) x = await go(new URL(x.location, issuer).toString());
    if (!x.location?.startsWith(REDIRECT)) throw new Error(`oidc-provider did not return a code: ${x.status} ${x.body.slice(0, 200)}`);
    return codeOf(x.location);
  };
  return { name: 'oidc-provider', tokenUrl: `${issuer}/token`, clientId: 'bench', resource, code };
}

// The load generator: wrk (C, epoll) when installed, so that on a small machine the generator
// takes as little of the CPU the servers share with it as possible; autocannon otherwise.
const useWrk = spawnSync('wrk', ['--version']).error === undefined && process.env.GEN !== 'autocannon';

async function load(url, bodies) {
  if (useWrk) return loadWrk(url, bodies);
  let i = 0;
  const result = await autocannon({
    url, method: 'POST', connections: CONNECTIONS, amount: bodies.length,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    requests: [{ setupRequest: (req) => ({ ...req, body: bodies[i++ % bodies.length] }) }],
  });
  const ok = result['2xx'];
  const secs = (new Date(result.finish) - new Date(result.start)) / 1000;
  // autocannon ends fixed-count runs on one-second ticks, so ok/secs is coarse; with a constant
  // number of connections, throughput = connections / mean latency (Little's law) is exact.
  return { gen: 'autocannon', rps: Math.round((CONNECTIONS * 1000) / result.latency.mean), rps_wall: Math.round(ok / secs), secs, ok, non2xx: result.non2xx, errors: result.errors, p50_ms: result.latency.p50, p99_ms: result.latency.p99 };
}

// wrk with bench/bodies.lua: each prepared body once; threads stop when their bodies are
// answered, so the run's duration is exact and rps = answered / duration.
function loadWrk(url, bodies) {
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-'));
  const file = join(dir, 'bodies.txt');
  writeFileSync(file, `${bodies.join('\n')}\n`);
  const r = spawnSync('wrk', ['-t', '1', '-c', String(CONNECTIONS), '-d', `${DURATION}s`, '--timeout', '10s', '-s', join(here, 'bodies.lua'), url], {
    env: { ...process.env, BODIES: file, THREADS: '1' }, encoding: 'utf8',
  });
  rmSync(dir, { recursive: true, force: true });
  const line = r.stdout.trim().split('\n').pop();
  const j = JSON.parse(line);
  if (j.exhausted) console.error(`${url}: ran out of prepared requests before ${DURATION}s; the figure is a lower bound (raise N)`);
  return { gen: 'wrk', rps: j.rps, secs: j.secs, ok: j.ok, non2xx: j.failed, errors: 0, exhausted: j.exhausted, p50_ms: j.p50_ms, p99_ms: j.p99_ms };
}

async function measure(s) {
  const exchange = (c) => new URLSearchParams({ grant_type: 'authorization_code', code: c, code_verifier: verifier, client_id: s.clientId, redirect_uri: REDIRECT, resource: s.resource }).toString();
  // Refresh tokens to rotate: the harness exchanges codes itself (not measured).
  const refreshTokens = await pool(N, 16, async () => {
    const r = await fetch(s.tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: exchange(await s.code()) });
    const j = await r.json();
    if (!j.refresh_token) throw new Error(`${s.name}: no refresh token: ${JSON.stringify(j)}`);
    return j.refresh_token;
  });
  // Codes live a minute: mint them right before the measurement.
  const codes = await pool(N, 16, s.code);
  const code = await load(s.tokenUrl, codes.map(exchange));
  const refresh = await load(s.tokenUrl, refreshTokens.map((t) => new URLSearchParams({ grant_type: 'refresh_token', refresh_token: t, client_id: s.clientId }).toString()));
  console.log(JSON.stringify({ server: s.name, code_exchange: code, refresh }));
  return { code, refresh };
}

const gh = await measure(await gatehouse(ghIssuer));
const op = await measure(await oidcProvider(opIssuer));
for (const [k, v] of Object.entries({ gh, op })) {
  if (v.code.non2xx || v.refresh.non2xx || v.code.errors || v.refresh.errors) {
    console.error(`${k}: some requests failed; the figures count successes only`);
  }
}
const r = (a, b) => (a / b).toFixed(2);
console.log(`code_exchange/oidc-provider=${r(gh.code.rps, op.code.rps)} refresh/oidc-provider=${r(gh.refresh.rps, op.refresh.rps)}`);
