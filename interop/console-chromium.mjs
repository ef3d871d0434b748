#!/usr/bin/env node
// The admin console and the account page in headless Chromium, as an operator and a user would
// use them (issue 18): keyboard-only sign-in and navigation, an axe-core accessibility check of
// every page (labels, contrast, names: WCAG 2 A and AA), screenshots kept as test artefacts.
// It also checks, from outside, that what the console does takes effect (a new client secret
// works, the old one and a disabled client's do not).
// env: GH_BASE; GH_ADMIN, GH_ADMIN_PASSWORD; GH_USER, GH_USER_PASSWORD (not an administrator);
// GH_REVOKE_CLIENT (a client the user approved: the admin revokes that consent);
// GH_SELF_REVOKE_NAME (the name of an app the user revokes on their own page);
// (axe-core is injected into the pages, so the contexts bypass our CSP: the suite checks the
// CSP header itself.)
// SHOTS (a directory for screenshots); RESULT (a JSON file of what happened); CHROMIUM.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium as pw } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const base = process.env.GH_BASE;
const shots = process.env.SHOTS;
mkdirSync(shots, { recursive: true });
const result = { a11y: {}, steps: [] };
const fail = (why) => {
  result.failed = why;
  writeFileSync(process.env.RESULT, JSON.stringify(result, null, 2));
  console.error(`console-chromium: ${why}`);
  process.exit(1);
};
const step = (s) => { result.steps.push(s); console.error(`console-chromium: ${s}`); };

async function axe(page, name) {
  await page.addScriptTag({ content: axeSource });
  const r = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const out = await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return { violations: out.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) })), passes: out.passes.map((p) => p.id) };
  });
  result.a11y[name] = r;
  if (r.violations.length) fail(`accessibility violations on ${name}: ${JSON.stringify(r.violations)}`);
  for (const must of ['label', 'color-contrast', 'button-name']) {
    if (!r.passes.includes(must) && name !== 'forbidden') {
      // A page without a form has nothing for `label` to pass; every page has text and buttons.
      if (must === 'label' && !(await page.locator('input:not([type=hidden]), textarea').count())) continue;
      fail(`axe did not check ${must} on ${name}`);
    }
  }
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

// Keyboard only: Tab until the focused element matches, then the caller presses a key. Returns
// how many Tabs it took; fails after 80.
async function tabTo(page, test, what) {
  for (let i = 1; i <= 80; i++) {
    await page.keyboard.press('Tab');
    const hit = await page.evaluate(test);
    if (hit) {
      const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      if (outline === 'none') fail(`${what} has no visible focus indicator`);
      return i;
    }
  }
  fail(`Tab never reached ${what}`);
}

async function signInByKeyboard(page, next, user, password) {
  const resp = await page.goto(`${base}/${next}`);
  if (!page.url().includes('/account/signin')) fail(`${next} did not ask to sign in (at ${page.url()}, ${resp.status()})`);
  const focused = await page.evaluate(() => document.activeElement?.id);
  if (focused !== 'username') fail(`sign-in page focus is on ${focused}, not the user name`);
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  const [r] = await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  return r;
}

async function submit(page, locator) {
  const [r] = await Promise.all([page.waitForNavigation(), locator.click()]);
  if (r.status() !== 200) fail(`${page.url()} answered ${r.status()}: ${await page.locator('main').innerText()}`);
  return r;
}

async function introspectStatus(id, secret) {
  const r = await fetch(`${base}/introspect`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: 'token=not-a-token',
  });
  return r.status;
}

const browser = await pw.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  // ---- a user who is not an administrator ----
  const userCtx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const u = await userCtx.newPage();
  await u.goto(`${base}/account/signin?next=admin`);
  await axe(u, 'signin');
  await shot(u, 'signin');
  const forbidden = await signInByKeyboard(u, 'admin', process.env.GH_USER, process.env.GH_USER_PASSWORD);
  result.user_admin_status = forbidden.status();
  await shot(u, 'admin-forbidden');
  await axe(u, 'forbidden');
  step(`non-admin at /admin: ${forbidden.status()}`);

  await u.goto(`${base}/account`);
  await axe(u, 'account');
  await shot(u, 'account');
  const apps = await u.locator('tbody tr').count();
  result.user_apps_before = apps;
  const name = process.env.GH_SELF_REVOKE_NAME;
  // The page's test below runs in the page: the name goes through a global.
  await u.evaluate((n) => { window.__revoke = n; }, name);
  await tabTo(u, () => document.activeElement?.getAttribute('aria-label')?.startsWith(`Revoke ${window.__revoke} `), `the Revoke button of ${name}`);
  const [revoked] = await Promise.all([u.waitForNavigation(), u.keyboard.press('Enter')]);
  if (revoked.status() !== 200) fail(`self-service revoke answered ${revoked.status()}`);
  result.user_self_revoke = await u.locator('[role=status]').innerText();
  result.user_apps_after = await u.locator('tbody tr').count();
  await shot(u, 'account-revoked');
  step(`user revoked ${name} by keyboard: ${result.user_self_revoke}`);

  // ---- the administrator ----
  const adminCtx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const a = await adminCtx.newPage();
  const home = await signInByKeyboard(a, 'admin', process.env.GH_ADMIN, process.env.GH_ADMIN_PASSWORD);
  if (home.status() !== 200 || (await a.locator('h1').innerText()) !== 'Overview') fail(`admin sign-in ended at ${a.url()} (${home.status()})`);
  await axe(a, 'admin-overview');
  await shot(a, 'admin-overview');
  // Keyboard navigation to a section.
  await tabTo(a, () => document.activeElement?.textContent === 'Clients', 'the Clients link');
  await Promise.all([a.waitForNavigation(), a.keyboard.press('Enter')]);
  if ((await a.locator('h1').innerText()) !== 'Clients') fail('keyboard navigation did not reach Clients');
  step('admin signed in and reached Clients by keyboard');

  // Add a confidential client: the secret is shown once.
  await a.fill('#client-name', 'Console Test App');
  await a.fill('#client-redirects', 'https://app.example.com/callback');
  await a.check('#type-confidential');
  await submit(a, a.getByRole('button', { name: 'Add client' }));
  const secret1 = await a.inputValue('#new-secret');
  const added = await a.locator('[role=status]').first().innerText();
  const clientId = /client_id (\S+)\./.exec(added)?.[1];
  if (!clientId || !secret1) fail(`no client id or secret after adding: ${added}`);
  await axe(a, 'admin-clients');
  await shot(a, 'admin-client-added');
  result.client_id = clientId;
  result.introspect_secret1 = await introspectStatus(clientId, secret1);
  step(`added client ${clientId}; its secret at /introspect: ${result.introspect_secret1}`);

  await submit(a, a.getByRole('button', { name: 'Rotate secret of Console Test App' }));
  const secret2 = await a.inputValue('#new-secret');
  result.introspect_secret1_after_rotate = await introspectStatus(clientId, secret1);
  result.introspect_secret2 = await introspectStatus(clientId, secret2);
  await submit(a, a.getByRole('button', { name: 'Disable Console Test App' }));
  result.introspect_secret2_disabled = await introspectStatus(clientId, secret2);
  result.client_row_disabled = (await a.locator('tr', { hasText: clientId }).innerText()).includes('disabled');
  await shot(a, 'admin-client-disabled');
  await submit(a, a.getByRole('button', { name: 'Enable Console Test App' }));
  result.introspect_secret2_enabled = await introspectStatus(clientId, secret2);
  step(`rotate/disable/enable: ${result.introspect_secret1_after_rotate} ${result.introspect_secret2} ${result.introspect_secret2_disabled} ${result.introspect_secret2_enabled}`);

  // Users: add, reset a password, disable.
  await a.goto(`${base}/admin/users`);
  await axe(a, 'admin-users');
  await a.fill('#new-username', 'carol');
  await a.fill('#new-password', 'carol-password-1');
  await submit(a, a.getByRole('button', { name: 'Add user' }));
  await a.fill('#reset-username', 'carol');
  await a.fill('#reset-password-field', 'carol-password-2');
  await submit(a, a.getByRole('button', { name: 'Reset password' }));
  await submit(a, a.getByRole('button', { name: 'Disable carol' }));
  result.carol_row = await a.locator('tr', { hasText: 'carol' }).innerText();
  await shot(a, 'admin-users');

  // Consents: revoke the user's consent for one client.
  await a.goto(`${base}/admin/consents`);
  await axe(a, 'admin-consents');
  await shot(a, 'admin-consents');
  const row = a.locator('tr', { hasText: process.env.GH_REVOKE_CLIENT });
  if (!(await row.count())) fail(`no consent row for ${process.env.GH_REVOKE_CLIENT}`);
  await submit(a, row.getByRole('button'));
  result.consent_revoked = await a.locator('[role=status]').innerText();
  result.consent_rows_left = await a.locator('tr', { hasText: process.env.GH_REVOKE_CLIENT }).count();
  step(`admin revoked a consent: ${result.consent_revoked}`);

  // Sessions: the user's session is listed; end it.
  await a.goto(`${base}/admin/sessions`);
  await axe(a, 'admin-sessions');
  await shot(a, 'admin-sessions');
  // Every session of the user (the browser above and earlier sign-ins).
  const ends = () => a.getByRole('button', { name: new RegExp(`^End session .* of ${process.env.GH_USER}$`) });
  result.user_sessions_ended = 0;
  while (await ends().count()) {
    await submit(a, ends().first());
    result.user_sessions_ended += 1;
    if (result.user_sessions_ended > 20) fail('sessions do not end');
  }
  const back = await u.goto(`${base}/account`);
  result.user_after_session_end = u.url().includes('/account/signin') ? 'asked to sign in' : `${back.status()} ${u.url()}`;

  // Keys: rotate.
  await a.goto(`${base}/admin/keys`);
  await axe(a, 'admin-keys');
  await submit(a, a.getByRole('button', { name: 'Rotate the signing key' }));
  result.keys_rows = await a.locator('tbody tr').count();
  await shot(a, 'admin-keys');

  // Audit: every action above is there; the gateway log's chain status is shown.
  await a.goto(`${base}/admin/audit`);
  await axe(a, 'admin-audit');
  await shot(a, 'admin-audit');
  result.audit_text = await a.locator('main').innerText();
  step('done');
} finally {
  writeFileSync(process.env.RESULT, JSON.stringify(result, null, 2));
  await browser.close();
}
