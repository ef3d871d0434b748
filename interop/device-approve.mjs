#!/usr/bin/env node
// The user's side of the device authorization grant in oidc-provider's development pages, for
// tests: started by the client (GATEHOUSE_BROWSER) with verification_uri_complete; confirms the
// code, signs in and consents by submitting each page's form, as a person would.
// env: LAUNCH_LOG (one line per launch).
import { appendFileSync } from 'node:fs';
import { cookieFetch } from './cookie-fetch.mjs';

const start = process.argv[2];
if (process.env.LAUNCH_LOG) appendFileSync(process.env.LAUNCH_LOG, `${start}\n`);
const go = cookieFetch();
let page = await go(start);
for (let i = 0; i < 20; i += 1) {
  if (page.location) {
    page = await go(new URL(page.location, page.url).toString());
    continue;
  }
  const form = page.body.match(/<form[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/);
  if (!form) break;
  const fields = {};
  for (const m of form[2].matchAll(/<input[^>]*name="([^"]+)"[^>]*>/g)) {
    const value = m[0].match(/value="([^"]*)"/)?.[1] ?? '';
    fields[m[1]] = value;
  }
  for (const m of form[2].matchAll(/<button[^>]*name="([^"]+)"[^>]*value="([^"]*)"/g)) {
    if (!(m[1] in fields)) fields[m[1]] = m[2];
  }
  if ('login' in fields) fields.login = process.env.DEVICE_USER ?? 'device-user';
  if ('password' in fields) fields.password = 'any';
  page = await go(new URL(form[1].replace(/&amp;/g, '&'), page.url).toString(), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields).toString(),
  });
}
console.error(`device-approve: finished at ${page.url} (${page.status})`);
