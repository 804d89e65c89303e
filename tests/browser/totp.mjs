// An app asks for a second factor (acr_values); the user has none, so Lanyard leads them to set
// up an authenticator in Chromium, with codes computed here as an authenticator app would
// (RFC 6238), then back to the app. Then a fresh sign-in with password and code.
// Usage: node totp.mjs BASE_URL AUTHORIZE_URL CALLBACK_PREFIX USERNAME PASSWORD SERVER_TIME
// (SERVER_TIME: the server's clock in Unix seconds; the test server's clock stands still.)
// Prints {"callback": URL}; exits non-zero, with the reason, on failure.
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, authorizeUrl, callbackPrefix, username, password, serverTime] = process.argv.slice(2);

const base32 = (s) => {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of s.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  return Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
};
const totp = (secret, at) => {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30)));
  const h = createHmac('sha1', base32(secret)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = (h.readUInt32BE(o) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, '0');
};

const profile = mkdtempSync(join(tmpdir(), 'lanyard-chromium-'));
const problems = [];
let callback;
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  await context.route((u) => !u.href.startsWith(base), (route) => route.abort());
  await context.route((u) => u.href.startsWith(callbackPrefix), (route) => {
    callback = route.request().url();
    return route.fulfill({ status: 200, contentType: 'text/plain', body: 'back at the app' });
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));

  await page.goto(authorizeUrl);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL((u) => u.pathname === '/account/totp');
  const secret = (await page.textContent('code.secret')).trim();
  const now = Number(serverTime);
  await page.getByLabel('Enter the 6-digit code the app shows').fill(totp(secret, now));
  await page.getByRole('button', { name: 'Turn on' }).click();
  await page.waitForSelector('text=Your recovery codes');
  await page.getByRole('link', { name: 'Continue' }).click();
  await page.waitForURL((u) => u.href.startsWith(callbackPrefix));

  // Signing in again (from a browser without cookies; the app's session lives on) now takes the
  // password and a code: the next step's, as each step's code works once.
  await context.clearCookies();
  await page.goto(`${base}/login`);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL(`${base}/login/mfa`);
  await page.getByLabel('Code from your authenticator app').fill(totp(secret, now + 30));
  await page.getByRole('button', { name: 'Verify' }).click();
  await page.waitForURL(`${base}/account`);
} catch (e) {
  problems.push(String(e));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (problems.length || !callback) {
  console.error(problems.join('\n') || 'never reached the app');
  process.exit(1);
}
console.log(JSON.stringify({ callback }));
