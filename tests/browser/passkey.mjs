// Passkeys and security keys in a real Chromium with the DevTools virtual authenticator:
// add a passkey, sign out, sign in with it and no username; add a security key, sign in with
// the password and the key as the second step.
// Usage: node passkey.mjs BASE_URL USERNAME PASSWORD. Exits non-zero, with the reason, on failure.
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
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  await context.route(url => !url.href.startsWith(base), route => route.abort());
  const page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', e => problems.push(`page error: ${e}`));
  page.on('console', msg => {
    const t = msg.text();
    // The refused replay below answers 400 or 401 on purpose.
    if (msg.type() === 'error' && !/status of 40[01]/.test(t)) problems.push(`console: ${t}`);
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId: platform } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  const signInWithPassword = async () => {
    await page.goto(`${base}/login`);
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  };
  const signOut = async () => {
    await page.goto(`${base}/account`);
    await page.getByRole('button', { name: 'Sign out', exact: true }).first().click();
    await page.waitForURL(`${base}/login`);
  };

  // A passkey, then a sign-in with it alone.
  await signInWithPassword();
  await page.waitForURL(`${base}/account`);
  await page.getByLabel('Name for the new key').fill('Laptop passkey');
  await page.getByRole('button', { name: 'Add passkey' }).click();
  await page.waitForSelector('text=Laptop passkey');
  check(await page.getByText('(Passkey)').isVisible(), 'the passkey is not listed');
  await signOut();
  check((await page.getAttribute('#username', 'autocomplete')) === 'username webauthn', 'no passkey autofill hint');
  // Capture the passkey's answer, to replay it later.
  let answered;
  await page.route(`${base}/login/passkey/finish`, async (route) => {
    answered = route.request().postData();
    await route.continue();
  });
  // The page also offers the passkey to autofill (conditional mediation); the virtual
  // authenticator may answer that at once. Either way no username was typed.
  await page.waitForTimeout(500);
  if (!page.url().startsWith(`${base}/account`)) {
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click({ noWaitAfter: true });
  }
  await page.waitForURL(`${base}/account`);
  check(await page.getByText(`Signed in as ${username}`).isVisible(), 'not signed in by the passkey');
  await page.unroute(`${base}/login/passkey/finish`);
  // The virtual authenticator answers autofill requests by itself; take it away so the
  // password sign-ins below are not signed in by the passkey first.
  await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: platform });

  // A replayed answer signs nobody in: its challenge was used up.
  await signOut();
  const replay = await page.evaluate(async (body) => {
    const csrf = document.getElementById('passkey-login').dataset.csrf;
    await fetch('/login/passkey/start', { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body: '{}' });
    const r = await fetch('/login/passkey/finish', { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body });
    return r.status;
  }, answered);
  check(replay === 401 || replay === 400, `a replayed passkey answer got ${replay}`);
  await signInWithPassword();
  await page.waitForURL(`${base}/account`);

  // A security key as the second step: a second, roaming authenticator (the first one already
  // holds a credential for this account, which registration excludes).
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'usb', hasResidentKey: false,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  await page.getByLabel('Name for the new key').fill('Desk key');
  await page.getByRole('button', { name: 'Add security key' }).click();
  try {
    await page.waitForSelector('#new-recovery-codes:not([hidden]) li', { timeout: 10000 });
  } catch (e) {
    throw new Error(`the security key was not added: ${await page.textContent('#key-status')}`);
  }
  check((await page.locator('#new-recovery-codes li').count()) === 10, 'ten recovery codes for the first second factor');
  await page.reload();
  await page.waitForSelector('text=Desk key');
  await signOut();
  await signInWithPassword();
  await page.waitForURL(`${base}/login/mfa`);
  await page.getByRole('button', { name: 'Use your security key' }).click();
  await page.waitForURL(`${base}/account`);
  check(await page.getByText(`Signed in as ${username}`).isVisible(), 'not signed in with password and key');
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
