// The card works offline once loaded: its page and assets come from the network when there is
// one (and are kept), else from the cache.
const CACHE = "instore-card-v1";
const ASSETS = ["/card/", "/card/qrcode.js", "/card/manifest.webmanifest", "/card/icon.svg"];

self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(ASSETS)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || !ASSETS.includes(url.pathname)) return;
  e.respondWith(
    fetch(e.request)
      .then((r) => {
        const copy = r.clone();
        caches.open(CACHE).then((c) => c.put(url.pathname, copy));
        return r;
      })
      .catch(() => caches.match(url.pathname)),
  );
});
