// A static https document server for tests: serves $DOC (JSON) at /client.json over TLS with the
// given certificate, as a client would host its Client ID Metadata Document.
// usage: node https-doc.mjs PORT CERT_PEM KEY_PEM      prints READY when listening
import { createServer } from 'node:https';
import { readFileSync } from 'node:fs';

const [port, cert, key] = process.argv.slice(2);
const server = createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
  if (req.url === '/client.json') {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
    res.end(process.env.DOC);
    console.log(`served ${req.url}`);
  } else {
    res.writeHead(404).end();
  }
});
server.listen(Number(port), '127.0.0.1', () => console.log('READY'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
