// fetch with a cookie jar and no redirect following: what the scripted browsers of the tests
// need to walk login and consent pages.
export function cookieFetch() {
  const jar = new Map();
  return async (url, init = {}) => {
    const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
    }
    return { url, status: r.status, location: r.headers.get('location'), body: await r.text() };
  };
}
