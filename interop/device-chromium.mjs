#!/usr/bin/env node
// The user's side of the device authorization grant in Gatehouse's own pages, in headless
// Chromium: started by the client (GATEHOUSE_BROWSER) with verification_uri_complete. It opens
// the plain verification_uri, as a person reading the code off a screen would, types the user
// code into the page's one text field, signs in, checks the consent page's phishing warning
// and approves.
// env: GH_USER, GH_PASSWORD; LAUNCH_LOG (one line per launch); GH_DEVICE_RESULT (a file that
// gets the final page's heading); CHROMIUM (default /usr/bin/chromium).
import { appendFileSync, writeFileSync } from 'node:fs';
import { chromium as pw } from 'playwright-core';

const complete = new URL(process.argv[2]);
if (process.env.LAUNCH_LOG) appendFileSync(process.env.LAUNCH_LOG, `${complete}\n`);
const code = complete.searchParams.get('user_code');
const plain = new URL(complete);
plain.search = '';
const fail = (why) => {
  if (process.env.GH_DEVICE_RESULT) writeFileSync(process.env.GH_DEVICE_RESULT, `FAILED: ${why}\n`);
  console.error(`device-chromium: ${why}`);
  process.exit(1);
};
if (!code) fail('no user_code in the verification URL');

const browser = await pw.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(plain.toString());
  const fields = await page.locator('input[type=text]').count();
  if (fields !== 1) fail(`the verification page has ${fields} text fields`);
  await page.fill('input[type=text]', code.toLowerCase().replace('-', ' '));
  await Promise.all([page.waitForLoadState(), page.click('button[type=submit]')]);
  if (await page.locator('input[type=password]').count()) {
    await page.fill('#username', process.env.GH_USER);
    await page.fill('#password', process.env.GH_PASSWORD);
    await Promise.all([page.waitForLoadState(), page.click('button[type=submit]')]);
  }
  const consent = await page.content();
  if (!consent.includes('showed you the code') || !consent.includes('If someone gave you the code')) {
    fail('the consent page does not warn about device codes from others');
  }
  await Promise.all([page.waitForLoadState(), page.click('button[value=approve]')]);
  const heading = (await page.locator('h1').textContent())?.trim();
  if (process.env.GH_DEVICE_RESULT) writeFileSync(process.env.GH_DEVICE_RESULT, `${heading}\n`);
  if (heading !== 'Device connected') fail(`ended at "${heading}"`);
} finally {
  await browser.close();
}
