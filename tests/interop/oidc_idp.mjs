// A certified OpenID Provider (npm oidc-provider) for the SSO interop test.
// argv: port, client secret, redirect uri, accounts JSON, key id
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, secret, redirectUri, accountsJson, kid] = process.argv.slice(2);
const accounts = JSON.parse(accountsJson);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'nbmanagement', client_secret: secret, redirect_uris: [redirectUri],
    grant_types: ['authorization_code'], response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: ['test-cookie-key'] },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  scopes: ['openid', 'email', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id, email: (accounts[id] || {}).email || `${id}@example.test`,
      email_verified: true, groups: (accounts[id] || {}).groups || [],
    }),
  }),
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`idp listening on ${port}`));
