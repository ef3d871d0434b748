#!/usr/bin/env node
// A "browser" for authorization servers that answer /authorize with a redirect at once (the MCP
// SDK's demo provider approves without a page): follows the redirects, which end at the
// client's loopback callback.
const url = process.argv[2];
const r = await fetch(url, { redirect: "follow" });
await r.arrayBuffer();
