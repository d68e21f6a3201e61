// Service worker of the patrol page: keeps the page shell so that the page opens
// (and a checkpoint's QR URL /p/… still records the scan) where the Wi-Fi does not
// reach. Served from the root, registered with scope "/p" (/patrol and /p/…). Network first, so an online page is always the gateway's current one; the
// cached copy only when the network fails or is too slow. Never touches /api/: scans
// are queued by the page itself, and an API answer must never come from a cache.
"use strict";

const CACHE = "patrol-shell-v1";
const PAGE = "/patrol";
const SHELL = [PAGE, "/static/patrol.js", "/static/patrol.css", "/patrol.webmanifest", "/static/patrol-icon.svg"];
const NAVIGATION_TIMEOUT_MS = 4000;
const ASSET_TIMEOUT_MS = 8000;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await Promise.all(SHELL.map(async (path) => {
      try {
        const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
        // a redirect means "log in first": the login form is not the page to keep
        if (response.ok && !response.redirected) await cache.put(path, response);
      } catch (error) {
        // offline while installing: the next online visit fills the cache
      }
    }));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith("patrol-") && key !== CACHE) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

// Which cached copy answers a request: the page for /patrol and every QR URL /p/…
// (the page reads the checkpoint and signature from its own address), else the file.
function shellKey(url) {
  if (url.pathname === PAGE || url.pathname.startsWith("/p/")) return PAGE;
  return SHELL.includes(url.pathname) ? url.pathname : null;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith("/api/")) return;
  const key = shellKey(url);
  if (key === null) return; // the board, the login form, …: straight to the network
  event.respondWith(networkFirst(request, key, url.pathname === key));
});

async function networkFirst(request, key, keep) {
  const cache = await caches.open(CACHE);
  const network = fetch(request).then((response) => {
    // only the plain page: never a QR page (it carries one scan) nor a redirect to login
    if (keep && response.ok && response.type === "basic" && !response.redirected) {
      cache.put(key, response.clone()).catch(() => {});
    }
    return response;
  });
  const wait = request.mode === "navigate" ? NAVIGATION_TIMEOUT_MS : ASSET_TIMEOUT_MS;
  const slow = new Promise((resolve) => { setTimeout(resolve, wait, null); });
  try {
    const first = await Promise.race([network, slow]);
    if (first) return first;
  } catch (error) {
    // offline: fall through to the copy
  }
  const cached = await cache.match(key);
  if (cached) return cached;
  return network; // no copy yet: wait for the network (or its error)
}
