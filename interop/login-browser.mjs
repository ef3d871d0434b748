#!/usr/bin/env node
// A scripted "browser" for tests of `gatehouse login` / `gatehouse connect`: the program the
// client starts (GATEHOUSE_BROWSER) with the authorization URL as its only argument. It signs in
// and approves through Gatehouse's real login and consent pages, then follows the redirect to the
// client's loopback listener, as a browser would.
// env: GH_USER, GH_PASSWORD; LAUNCH_LOG (a file that gets one line per launch, for assertions).
import { appendFileSync } from 'node:fs';
import { cookieFetch } from './cookie-fetch.mjs';

const start = process.argv[2];
if (process.env.LAUNCH_LOG) appendFileSync(process.env.LAUNCH_LOG, `${start}\n`);
const go = cookieFetch();
const form = (o) => ({ method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(o).toString() });
const origin = new URL(start).origin;
let page = await go(start);
if (page.status === 200) {
  const field = (name) => page.body.match(new RegExp(`name="${name}" value="([^"]*)"`))?.[1];
  const hidden = { pending: field('pending'), csrf: field('csrf') };
  if (page.body.includes('type="password"')) {
    page = await go(`${origin}/login`, form({ ...hidden, username: process.env.GH_USER, password: process.env.GH_PASSWORD }));
  }
  if (page.status === 200) page = await go(`${origin}/consent`, form({ ...hidden, decision: 'approve' }));
}
if (!page.location) {
  console.error(`login-browser: no redirect (status ${page.status})`);
  process.exit(1);
}
await go(new URL(page.location, origin).toString());
