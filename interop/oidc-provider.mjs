// A real, unmodified oidc-provider as the external authorization server for interop tests and
// `scripts/dev`. Resource indicators on, JWT access tokens (ES256) audience-bound to the requested
// resource (opaque ones for resources ending in /opaque-mcp), client_credentials for the test client,
// introspection and revocation. A fresh signing key (new kid) at every start,
// so restarting it is a key rotation.
//
// usage: node oidc-provider.mjs PORT
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';
import { randomUUID } from 'node:crypto';

const port = Number(process.argv[2] || 4000);
// Upstream-IdP mode (for Gatehouse's enterprise sign-in): a confidential code client whose
// redirect URI is UPSTREAM_REDIRECT, the development login page, email and groups claims.
const upstreamRedirect = process.env.UPSTREAM_REDIRECT;
// Device-flow mode (for Gatehouse's client): a public client for the device authorization grant
// (RFC 8628), with the development login pages for the user step.
const deviceFlow = Boolean(process.env.DEVICE_FLOW);
// Open-registration mode (for `gatehouse check --authorization-server`): dynamic client
// registration as oidc-provider ships it, with the development login pages.
const openRegistration = Boolean(process.env.OPEN_REGISTRATION);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = 'mcp:basic notes:write';

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'gatehouse-interop',
      client_secret: 'interop-secret-not-for-production',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: SCOPES,
      // Only an ES256 key exists, so every signed response uses it.
      id_token_signed_response_alg: 'ES256',
    },
    {
      // The resource server's own credentials, for RFC 7662 introspection.
      client_id: 'gatehouse-rs',
      client_secret: 'rs-secret-not-for-production',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
    },
    ...(upstreamRedirect ? [{
      client_id: 'gatehouse-upstream',
      client_secret: 'upstream-secret-not-for-production',
      grant_types: ['authorization_code'],
      redirect_uris: [upstreamRedirect],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
    }] : []),
    ...(deviceFlow ? [{
      client_id: 'gatehouse-device',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'none',
      id_token_signed_response_alg: 'ES256',
    }] : []),
  ],
  jwks: { keys: [jwk] },
  scopes: upstreamRedirect ? [...SCOPES.split(' '), 'openid', 'email', 'groups'] : SCOPES.split(' '),
  claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
  // ID tokens carry the claims their scopes ask for (what an enterprise IdP is set up to do).
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    return { accountId: id, claims: () => ({ sub: id, email: `${id}@example.com`, groups: ['engineering', 'staff'] }) };
  },
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: Boolean(upstreamRedirect) || deviceFlow || openRegistration },
    registration: { enabled: openRegistration },
    deviceFlow: { enabled: deviceFlow },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => ({
        scope: SCOPES,
        audience: resourceIndicator,
        accessTokenTTL: 300,
        // Resources whose path ends in /opaque-mcp get opaque tokens (validated by introspection).
        accessTokenFormat: resourceIndicator.endsWith('/opaque-mcp') ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.proxy = false;
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`READY ${issuer} kid=${jwk.kid}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
