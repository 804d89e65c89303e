// Signs in through Lanyard's pages in a real Chromium, phone-sized, without help from the test
// harness: finds fields by their labels and buttons by their visible names, as a person would.
// Usage: node signin.mjs BASE_URL USERNAME PASSWORD. Exits non-zero, with the reason, on failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, username, password] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'lanyard-chromium-'));
const problems = [];
const check = (ok, what) => { if (!ok) problems.push(what); };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 390, height: 844 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // Nothing leaves the machine.
  await context.route(url => !url.href.startsWith(base), route => route.abort());
  const page = context.pages()[0] ?? await context.newPage();
  // Errors on the console (a CSP violation, a missing file) are failures; the 401 of the
  // deliberately wrong password is not.
  page.on('console', msg => {
    if (msg.type() === 'error' && !msg.text().includes('status of 401')) problems.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', e => problems.push(`page error: ${e}`));

  await page.goto(`${base}/login?return_to=/account`);
  check(await page.title() === 'Sign in · Lanyard', `login title: ${await page.title()}`);
  const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  check(fits, 'the login page scrolls sideways on a phone');
  const styled = await page.evaluate(() => getComputedStyle(document.querySelector('button')).borderRadius);
  check(styled !== '0px', 'the stylesheet was not applied');

  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForLoadState();
  check((await page.getByRole('alert').textContent())?.includes('Incorrect username or password'),
        'no clear message for a wrong password');

  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL(`${base}/account`);
  check(await page.getByText('this device').isVisible(), 'the current session is not marked');
  const cookie = (await context.cookies()).find(c => c.name === 'lanyard_session');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Lax' && cookie.path === '/',
        `session cookie flags: ${JSON.stringify(cookie)}`);
  check(await page.evaluate(() => !document.cookie.includes('lanyard_session')),
        'scripts can read the session cookie');

  await page.getByRole('button', { name: 'Sign out', exact: true }).first().click();
  await page.waitForURL(`${base}/login`);
  check(!(await context.cookies()).some(c => c.name === 'lanyard_session'), 'sign-out left the cookie');
  await page.goto(`${base}/account`);
  check(page.url().startsWith(`${base}/login`), 'the account page is reachable after sign-out');
} catch (e) {
  problems.push(String(e));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('ok');
