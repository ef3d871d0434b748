// oidc-provider configured like Gatehouse's embedded server for the token-endpoint benchmark: a
// public client with PKCE, resource indicators with ES256 JWT access tokens, refresh tokens that
// rotate. Its built-in development login (devInteractions) stands in for a login page; storage is
// in memory (an unbounded map adapter below).
//
// usage: node oidc-provider-bench.mjs PORT
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const port = Number(process.argv[2] || 4100);
const issuer = `http://127.0.0.1:${port}`;
const resource = `${issuer}/mcp`;
const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'bench', alg: 'ES256', use: 'sig' };

// Its built-in development adapter is an LRU of 1000 entries, which evicts live codes and grants
// under load; this one keeps everything in plain maps (still in memory, no persistence).
const store = new Map();
const grants = new Map();
class MapAdapter {
  constructor(name) { this.name = name; }
  key(id) { return `${this.name}:${id}`; }
  async upsert(id, payload) {
    store.set(this.key(id), payload);
    if (payload.grantId) {
      const ids = grants.get(payload.grantId) ?? [];
      ids.push(this.key(id));
      grants.set(payload.grantId, ids);
    }
  }
  async find(id) { return store.get(this.key(id)); }
  async findByUid(uid) { for (const [k, v] of store) if (k.startsWith(`${this.name}:`) && v.uid === uid) return v; return undefined; }
  async findByUserCode(code) { for (const [k, v] of store) if (k.startsWith(`${this.name}:`) && v.userCode === code) return v; return undefined; }
  async consume(id) { const v = store.get(this.key(id)); if (v) v.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) { for (const k of grants.get(grantId) ?? []) store.delete(k); grants.delete(grantId); }
}

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [{
    client_id: 'bench',
    token_endpoint_auth_method: 'none',
    redirect_uris: ['http://127.0.0.1:9/cb'],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [jwk] },
  scopes: ['mcp:basic'],
  pkce: { required: () => true },
  // Codes for the measurement are minted before it; this only keeps them from expiring meanwhile.
  ttl: { AuthorizationCode: 600, AccessToken: 300, RefreshToken: 86400, Grant: 86400, Session: 86400, Interaction: 3600 },
  issueRefreshToken: () => true,
  rotateRefreshToken: () => true,
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'mcp:basic',
        audience: resource,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`READY ${issuer}`));
