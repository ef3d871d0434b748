// A real MCP host: the official TypeScript SDK's stdio client, starting `gatehouse connect URL`
// as its server process and calling a tool through it.
// usage: node sdk-stdio-host.mjs GATEHOUSE_BIN MCP_URL
// Prints one JSON line with the tool list and the result; exits non-zero on failure. The
// bridge's stderr (progress messages) passes through to this process's stderr.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const [bin, url] = process.argv.slice(2);
const transport = new StdioClientTransport({ command: bin, args: ['connect', url], env: process.env, stderr: 'inherit' });
const client = new Client({ name: 'sdk-stdio-host', version: '1.0.0' });
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name);
const sum = await client.callTool({ name: 'add', arguments: { a: 2, b: 40 } });
const who = await client.callTool({ name: 'whoami', arguments: {} });
console.log(JSON.stringify({ tools, sum: sum.content?.[0]?.text, whoami: who.content?.[0]?.text }));
await client.close();
