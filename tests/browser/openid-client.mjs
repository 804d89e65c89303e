// Signs in to a Lanyard client with openid-client (the certified Node.js relying party) and a
// real Chromium: discovery, authorization code + PKCE through Lanyard's own login page, ID
// token validation, userinfo and a refresh. Prints the claims as JSON; exits non-zero on failure.
// Usage: node openid-client.mjs BASE_URL CLIENT_ID CLIENT_SECRET REDIRECT_URI USERNAME PASSWORD
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as client from 'openid-client';
import { chromium } from 'playwright-core';

const [base, clientId, clientSecret, redirectUri, username, password] = process.argv.slice(2);

// Plain http is fine on localhost, and only there.
const config = await client.discovery(new URL(base), clientId, clientSecret, undefined, {
  execute: [client.allowInsecureRequests],
});
const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: 'openid profile email',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});

const profile = mkdtempSync(join(tmpdir(), 'lanyard-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let callback;
try {
  await context.route(u => !u.href.startsWith(base), route => route.abort());
  // The app's callback: catch the redirect instead of needing a server there.
  await context.route(u => u.href.startsWith(redirectUri), route => {
    callback = route.request().url();
    return route.fulfill({ status: 200, contentType: 'text/plain', body: 'signed in' });
  });
  const page = context.pages()[0] ?? await context.newPage();
  await page.goto(url.href);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL(u => u.href.startsWith(redirectUri));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (!callback) {
  console.error('the browser never reached the callback');
  process.exit(1);
}

const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
  pkceCodeVerifier: verifier,
  expectedState: state,
  expectedNonce: nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
console.log(JSON.stringify({
  sub: claims.sub,
  email: userinfo.email,
  preferred_username: userinfo.preferred_username,
  refreshed_sub: refreshed.claims()?.sub,
  rotated: refreshed.refresh_token !== tokens.refresh_token,
}));
