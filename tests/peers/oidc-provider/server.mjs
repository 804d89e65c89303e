// panva's oidc-provider, set up like Lanyard for BENCHMARKS.md:
// - the same confidential client (Basic auth), ES256 ID tokens, PKCE required;
// - a refresh token for every client allowed the grant, rotated on every use;
// - consent given without asking (Lanyard's --skip-consent);
// - passwords checked with argon2id at Lanyard's default parameters (m=19 MiB, t=2, p=1);
// - its in-memory adapter.
// Settings come from the environment: PORT, ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI,
// USERNAME, USERS (with USERS=N the users are USERNAME0 … USERNAME{N-1}), PASSWORD.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';
import { Algorithm, hash, verify } from '@node-rs/argon2';

const env = process.env;
const port = Number(env.PORT || 3000);
const issuer = env.ISSUER || `http://localhost:${port}`;
const argon2id = { algorithm: Algorithm.Argon2id, memoryCost: 19 * 1024, timeCost: 2, parallelism: 1 };

const users = new Map();
const count = Number(env.USERS || 0);
for (const name of count > 0 ? [...Array(count).keys()].map((i) => `${env.USERNAME}${i}`) : [env.USERNAME]) {
  users.set(name, await hash(env.PASSWORD, argon2id));
}

const privateJwk = (type, options) => generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' });
const provider = new Provider(issuer, {
  clients: [{
    client_id: env.CLIENT_ID,
    client_secret: env.CLIENT_SECRET,
    redirect_uris: [env.REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    id_token_signed_response_alg: 'ES256',
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: {
    keys: [
      { ...privateJwk('ec', { namedCurve: 'P-256' }), alg: 'ES256', use: 'sig', kid: 'es256' },
      { ...privateJwk('rsa', { modulusLength: 2048 }), alg: 'RS256', use: 'sig', kid: 'rs256' },
    ],
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  loadExistingGrant: async (ctx) => {
    const { client, session, provider: op } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) return op.Grant.find(grantId);
    const grant = new op.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope('openid profile email');
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 30 * 24 * 3600,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 30 * 24 * 3600,
    Session: 8 * 3600,
  },
});

const loginPage = (uid) => `<!doctype html><title>Sign in</title>
<form method="post" action="/interaction/${uid}/login">
<label>Username <input name="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form>`;

const readBody = (req) => new Promise((resolve, reject) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; if (body.length > 65536) req.destroy(); });
  req.on('end', () => resolve(body));
  req.on('error', reject);
});

const callback = provider.callback();
createServer(async (req, res) => {
  const m = req.url.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!m) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== m[1]) throw new Error('not this interaction');
    if (req.method === 'GET' && !m[2]) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(loginPage(details.uid));
    }
    if (req.method === 'POST' && m[2]) {
      const form = new URLSearchParams(await readBody(req));
      const stored = users.get(form.get('username') ?? '');
      if (!stored || !(await verify(stored, form.get('password') ?? ''))) {
        res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
        return res.end(loginPage(details.uid));
      }
      return await provider.interactionFinished(req, res, { login: { accountId: form.get('username') } }, { mergeWithLastSubmission: false });
    }
    res.writeHead(405);
    return res.end();
  } catch (e) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    return res.end(`${e.message}\n`);
  }
}).listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
