// The README's single sign-on walk in a real Chromium, with two demo apps: sign in at App A, open
// App B and be signed in without a password, sign out at one and find the other signed out.
// App A hears of sign-outs through the back channel; App B through a frame that Lanyard's
// signed-out page loads (front channel), which also proves the page's CSP lets that frame load.
// Usage: node sso.mjs LANYARD_URL APP_A_URL APP_B_URL USERNAME PASSWORD.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [lanyard, appA, appB, username, password] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'lanyard-chromium-'));
const problems = [];
const check = (ok, what) => { if (!ok) problems.push(what); };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const local = [lanyard, appA, appB];
try {
  await context.route(url => !local.some(l => url.href.startsWith(l)), route => route.abort());
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', msg => { if (msg.type() === 'error') problems.push(`console: ${msg.text()}`); });
  page.on('pageerror', e => problems.push(`page error: ${e}`));
  const who = async () => (await page.locator('#who').textContent())?.trim();
  // Reloads an app until it shows the expected state, for what arrives in the background.
  const until = async (url, expected) => {
    for (let i = 0; i < 50; i++) {
      await page.goto(url);
      if ((await who()) === expected) return true;
      await page.waitForTimeout(200);
    }
    return false;
  };

  for (const signOutAt of [appA, appB]) {
    // Sign in at App A with a password.
    await page.goto(appA);
    check((await who()) === 'Not signed in.', 'App A starts signed out');
    await page.getByRole('link', { name: 'Sign in with Lanyard' }).click();
    await page.waitForURL(url => url.href.startsWith(`${lanyard}/login`));
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL(`${appA}/`);
    const sub = await who();
    check(sub && sub !== 'Not signed in.', 'signed in at App A');

    // App B: no password asked.
    await page.goto(appB);
    await page.getByRole('link', { name: 'Sign in with Lanyard' }).click();
    await page.waitForURL(`${appB}/`);
    check((await who()) === sub, 'App B signed in the same user without a password');

    // Sign out at one app: Lanyard's signed-out page frames App B's logout URI, then moves on.
    await page.goto(signOutAt);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(url => url.href.startsWith(`${lanyard}/end_session`));
    check(await page.getByRole('heading', { name: 'You are signed out' }).isVisible(),
          'the signed-out page');
    check(await page.locator('iframe.logout-frame').count() === 1, 'one front-channel frame');
    await page.waitForURL(url => url.href.startsWith(`${signOutAt}/?state=`), { timeout: 10000 });
    check((await who()) === 'Not signed in.', `signed out at ${signOutAt}`);

    check(await until(appA, 'Not signed in.'), `App A still signed in after signing out at ${signOutAt}`);
    check(await until(appB, 'Not signed in.'), `App B still signed in after signing out at ${signOutAt}`);
    await page.goto(`${lanyard}/account`);
    check(page.url().startsWith(`${lanyard}/login`), 'Lanyard itself signed out');
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
