// DPoP proofs (RFC 9449) for bench/gateway.sh, made ahead of a run (each is single use).
//   node dpop-proofs.mjs key FILE              a new P-256 key, saved as a private JWK
//   node dpop-proofs.mjs proof FILE URL [TOKEN] one proof (POST URL, ath of TOKEN) on stdout
//   node dpop-proofs.mjs many FILE URL TOKEN N  N proofs, one per line
import { createHash, createPrivateKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

const [mode, file, url, token, n] = process.argv.slice(2);
if (mode === 'key') {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(file, JSON.stringify(privateKey.export({ format: 'jwk' })));
  process.exit(0);
}
const jwk = JSON.parse(readFileSync(file, 'utf8'));
const key = createPrivateKey({ key: jwk, format: 'jwk' });
const b64 = (b) => Buffer.from(b).toString('base64url');
const header = b64(JSON.stringify({ typ: 'dpop+jwt', alg: 'ES256', jwk: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y } }));
const ath = token ? b64(createHash('sha256').update(token).digest()) : undefined;
const proof = () => {
  const body = b64(JSON.stringify({ jti: randomUUID(), htm: 'POST', htu: url, iat: Math.floor(Date.now() / 1000), ath }));
  const sig = sign('sha256', Buffer.from(`${header}.${body}`), { key, dsaEncoding: 'ieee-p1363' });
  return `${header}.${body}.${b64(sig)}`;
};
const count = mode === 'many' ? Number(n) : 1;
const out = [];
for (let i = 0; i < count; i += 1) out.push(proof());
process.stdout.write(`${out.join('\n')}\n`);
