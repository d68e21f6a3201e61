// The guard's patrol page (巡更打卡) on the phone: offline-first.
// Every scan is first written to a queue in localStorage with the phone's time and
// an id of its own, then sent; the queue is sent again on load, when the phone comes
// back online, after each scan and every 15 s. An item leaves the queue only when
// the gateway has stored it (2xx) or will never take it (a forged QR code: it is then
// listed as refused). Sending twice is harmless: the API is idempotent on the id.
// Everything shown is set with textContent (never innerHTML).
"use strict";

const boot = JSON.parse(document.body.dataset.boot);
const T = boot.strings;
const $ = (id) => document.getElementById(id);
const HOLD_MS = 2000;
const FLUSH_EVERY_MS = 15000;
const PANIC_RETRY_MS = 3000;
const KEEP = 30;
const CODE_RE = /^[0-9A-Za-z]{3,12}$/;
const METHOD = { qr: t("patrol_method_qr"), nfc: t("patrol_method_nfc"), code: t("patrol_method_code") };
let reachable = true;

function t(key) {
  return T[key] !== undefined ? T[key] : key;
}

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---- the queue, the history and the refused list (per user, in localStorage) ------

function storageKey(name) {
  return `patrol.${name}.${boot.user}`;
}

function load(name) {
  try {
    const value = JSON.parse(localStorage.getItem(storageKey(name)) || "[]");
    return Array.isArray(value) ? value : [];
  } catch (error) {
    return [];
  }
}

function save(name, list) {
  localStorage.setItem(storageKey(name), JSON.stringify(list));
}

function update(name, change) {
  // read-modify-write each time: another tab may have changed the list meanwhile
  const list = change(load(name));
  save(name, list.slice(0, name === "queue" ? list.length : KEEP));
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  // crypto.randomUUID needs a secure context; getRandomValues does not
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const CATEGORIES = {
  repair: t("patrol_category_repair"),
  security: t("patrol_category_security"),
  fire_hazard: t("patrol_category_fire_hazard"),
  cleanliness: t("patrol_category_cleanliness"),
  other: t("patrol_category_other"),
};

function labelOf(item) {
  if (item.kind === "panic") return t("patrol_panic_item");
  if (item.kind === "report") return `${t("patrol_report")}: ${CATEGORIES[item.category] || item.category}`;
  if (item.method === "qr") return boot.checkpoints[item.checkpoint] || item.checkpoint;
  return item.method === "code" ? item.code : item.tag;
}

function record(fields) {
  const item = { scan_id: newId(), scanned_at: new Date().toISOString(), ...fields };
  update("queue", (queue) => [...queue, item]);
  const entry = {
    scan_id: item.scan_id, kind: item.kind, method: item.method, label: labelOf(item),
    scanned_at: item.scanned_at, status: "queued", silent: !!item.silent,
    checkpoint: item.kind === "report" ? null : item.checkpoint || null,
  };
  update("history", (history) => [entry, ...history]);
  if (item.kind === "panic") {
    if (!item.silent) show("bad", t("patrol_panic_queued"));
  } else {
    show("queued", `${t("patrol_saved_offline")}: ${entry.label}`);
  }
  render();
  flush();
  return item;
}

function settle(item, status, changes) {
  update("queue", (queue) => queue.filter((q) => q.scan_id !== item.scan_id));
  update("history", (history) => {
    const found = history.find((h) => h.scan_id === item.scan_id);
    if (found) Object.assign(found, { status }, changes);
    return history;
  });
}

// ---- sending -----------------------------------------------------------------------

function bodyOf(item, sentAt) {
  if (item.kind === "report") {
    const body = { report_id: item.scan_id, category: item.category, note: item.note, reported_at: item.scanned_at, sent_at: sentAt };
    if (item.checkpoint) body.checkpoint = item.checkpoint;
    if (item.photo) body.photo = item.photo;
    return body;
  }
  if (item.kind === "panic") {
    return { panic_id: item.scan_id, silent: !!item.silent, pressed_at: item.scanned_at, sent_at: sentAt };
  }
  const body = { scan_id: item.scan_id, method: item.method, scanned_at: item.scanned_at, sent_at: sentAt };
  for (const key of ["checkpoint", "sig", "code", "tag"]) {
    if (item[key]) body[key] = item[key];
  }
  return body;
}

function detailOf(status, data) {
  const d = data && data.detail;
  return typeof d === "string" ? d : JSON.stringify(d || status);
}

// "next": go on with the next item; "stop": the gateway cannot be reached, try later;
// "retry": the page's CSRF token was renewed, send the queue again now.
async function send(item) {
  const paths = { panic: "/api/v1/patrol/panic", report: "/api/v1/patrol/reports" };
  const path = paths[item.kind] || "/api/v1/patrol/scans";
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": boot.csrf },
      body: JSON.stringify(bodyOf(item, new Date().toISOString())),
    });
  } catch (error) {
    reachable = false;
    return "stop";
  }
  reachable = true;
  let data = {};
  try { data = await response.json(); } catch (error) { data = {}; }
  if (response.ok) {
    delivered(item, data);
    return "next";
  }
  if (response.status === 401) {
    $("relogin").hidden = false;
    return "stop";
  }
  const detail = detailOf(response.status, data);
  if (response.status === 403 && /csrf/i.test(detail)) {
    return (await renewCsrf()) ? "retry" : "stop";
  }
  if (response.status >= 500 || response.status === 408 || response.status === 429) return "stop";
  refused(item, response.status, detail);
  return "next";
}

function delivered(item, data) {
  $("relogin").hidden = true;
  if (item.kind === "report") {
    settle(item, "sent", {});
    show("ok", t("patrol_report_sent"));
    return;
  }
  if (item.kind === "panic") {
    settle(item, "sent", {});
    if (!item.silent) show("bad", t("patrol_panic_sent"));
    return;
  }
  const name = boot.lang === "en" && data.name_en ? data.name_en : data.name;
  const label = name || labelOf(item);
  const note = data.known === false ? t("patrol_unknown_code") : "";
  settle(item, "sent", { label, note, checkpoint: data.checkpoint || null });
  if (note) {
    show("bad", `${t("patrol_not_counted")}: ${label} (${note})`);  // a wrong code is no check-in
  } else {
    show("ok", `${t("patrol_checked_in")}: ${label}`);
  }
}

function refused(item, status, detail) {
  const note = status === 403 && item.method === "qr" ? t("patrol_forged") : `${status} ${detail}`;
  settle(item, "refused", { note });
  update("refused", (list) => [
    { scan_id: item.scan_id, label: labelOf(item), method: item.method, kind: item.kind,
      scanned_at: item.scanned_at, note, status },
    ...list,
  ]);
  show("bad", `${t("patrol_status_refused")}: ${labelOf(item)} · ${note}`);
}

// A page shown from the service worker's copy may carry an old CSRF token: ask the
// gateway for the page again and take the token from it (no new endpoint needed).
async function renewCsrf() {
  try {
    const response = await fetch("/patrol", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok || response.redirected) {
      $("relogin").hidden = false;
      return false;
    }
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = JSON.parse(doc.body.dataset.boot || "{}");
    if (fresh.user !== boot.user) {
      window.location.assign("/patrol");
      return false;
    }
    const changed = fresh.csrf && fresh.csrf !== boot.csrf;
    boot.csrf = fresh.csrf;
    return !!changed;
  } catch (error) {
    return false;
  }
}

let flushing = null;
let again = false;
let panicRetry = null;

// panics first: one must not wait behind a round's worth of queued scans
function sendingOrder() {
  const queue = load("queue");
  return [...queue.filter((q) => q.kind === "panic"), ...queue.filter((q) => q.kind !== "panic")];
}

function flush() {
  if (flushing) {
    again = true;
    return flushing;
  }
  flushing = (async () => {
    try {
      let renewed = false;
      do {
        again = false;
        for (const item of sendingOrder()) {
          const outcome = await send(item);
          if (outcome === "retry" && !renewed) {
            renewed = true;
            again = true;
          }
          if (outcome !== "next") break;
        }
        render();
      } while (again && reachable);
    } finally {
      flushing = null;
      render();
      // a panic is retried every few seconds until the gateway has acknowledged it
      if (panicRetry === null && load("queue").some((q) => q.kind === "panic")) {
        panicRetry = setTimeout(() => { panicRetry = null; flush(); }, PANIC_RETRY_MS);
      }
    }
  })();
  return flushing;
}

// ---- showing -------------------------------------------------------------------------

function fmtTime(iso) {
  const locale = boot.lang === "zh" ? "zh-CN" : "en-GB";
  const options = { hour12: false, month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" };
  try {
    return new Date(iso).toLocaleString(locale, { ...options, timeZone: boot.zone });
  } catch (error) {
    return new Date(iso).toLocaleString(locale, options);
  }
}

let resultTimer = null;
function show(kind, text) {
  const box = $("result");
  box.textContent = text;
  box.className = `result ${kind}`;
  box.hidden = false;
  clearTimeout(resultTimer);
  resultTimer = setTimeout(() => { box.hidden = true; }, 60000);
}

const STATUS = {
  queued: t("patrol_status_queued"),
  sent: t("patrol_status_sent"),
  refused: t("patrol_status_refused"),
};

function row(entry) {
  const method = entry.kind === "panic" ? t("patrol_panic_item") : METHOD[entry.method] || entry.method;
  const li = el(
    "li", `item ${entry.status || "refused"}`,
    el("span", "label", entry.label),
    el("span", "pill", STATUS[entry.status] || STATUS.refused),
    el("span", "meta", `${fmtTime(entry.scanned_at)} · ${method}`),
    entry.note ? el("span", "note", entry.note) : null,
  );
  li.dataset.scan = entry.scan_id;
  return li;
}

function render() {
  const queue = load("queue");
  $("queue").textContent = `${t("patrol_queue")} ${queue.length}`;
  $("queue").classList.toggle("waiting", queue.length > 0);
  const online = navigator.onLine && reachable;
  $("net").textContent = online ? t("patrol_online") : t("patrol_offline");
  $("net").className = online ? "net on" : "net off";
  // a silent panic is not listed on the screen: someone may be looking at it
  const history = load("history").filter((h) => !(h.kind === "panic" && h.silent));
  $("history").replaceChildren(
    ...(history.length ? history.map(row) : [el("li", "quiet", t("patrol_no_scans"))]),
  );
  const refusedList = load("refused");
  $("refused-box").hidden = refusedList.length === 0;
  $("refused").replaceChildren(...refusedList.map((r) => row({ ...r, status: "refused" })));
}

// ---- ways to scan --------------------------------------------------------------------

function landing() {
  if (boot.scan && boot.scan.checkpoint) return boot.scan;
  // the service worker's copy of the page for a QR URL opened while offline
  const match = window.location.pathname.match(/^\/p\/([^/]+)$/);
  if (!match) return null;
  try {
    return {
      checkpoint: decodeURIComponent(match[1]).slice(0, 64),
      sig: (new URLSearchParams(window.location.search).get("s") || "").slice(0, 64),
    };
  } catch (error) {
    return null;
  }
}

$("code-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("code");
  const code = input.value.trim().toUpperCase();
  if (!CODE_RE.test(code)) {
    show("bad", t("patrol_code_invalid"));
    input.focus();
    return;
  }
  input.value = "";
  record({ kind: "scan", method: "code", code });
});

// Web NFC exists only in Chrome for Android (on HTTPS): offered only where it is.
if ("NDEFReader" in window) {
  const button = $("nfc");
  button.hidden = false;
  let reader = null;
  let last = { tag: "", at: 0 };
  button.addEventListener("click", async () => {
    if (reader) {
      show("queued", t("patrol_nfc_ready"));
      return;
    }
    try {
      reader = new window.NDEFReader();
      await reader.scan();
      show("queued", t("patrol_nfc_ready"));
      reader.addEventListener("reading", (event) => {
        const tag = String(event.serialNumber || "").toUpperCase().replace(/:/g, "").slice(0, 64);
        const now = Date.now();
        if (!tag || (tag === last.tag && now - last.at < 5000)) return; // one touch, one scan
        last = { tag, at: now };
        record({ kind: "scan", method: "nfc", tag });
      });
      reader.addEventListener("readingerror", () => show("bad", t("patrol_nfc_failed")));
    } catch (error) {
      reader = null;
      show("bad", `${t("patrol_nfc_failed")}: ${error && error.message ? error.message : error}`);
    }
  });
}

// ---- the panic button: a long press (2 s), so a pocket or a slip does not raise it ----

const panic = $("panic");
let holdTimer = null;

function holdStart(event) {
  if (holdTimer !== null) return;
  if (event.cancelable) event.preventDefault();
  panic.classList.add("holding");
  $("panic-label").textContent = t("patrol_panic_hold");
  holdTimer = setTimeout(() => {
    holdTimer = null;
    holdReset();
    const silent = $("silent").checked;
    record({ kind: "panic", method: "panic", silent });
    if (!silent && navigator.vibrate) navigator.vibrate([300, 100, 300]);
  }, HOLD_MS);
}

function holdReset() {
  if (holdTimer !== null) clearTimeout(holdTimer);
  holdTimer = null;
  panic.classList.remove("holding");
  $("panic-label").textContent = t("patrol_panic");
}

panic.addEventListener("pointerdown", holdStart);
for (const name of ["pointerup", "pointerleave", "pointercancel"]) panic.addEventListener(name, holdReset);
panic.addEventListener("contextmenu", (event) => event.preventDefault());
panic.addEventListener("keydown", (event) => {
  if ((event.key === "Enter" || event.key === " ") && !event.repeat) holdStart(event);
});
panic.addEventListener("keyup", (event) => {
  if (event.key === "Enter" || event.key === " ") holdReset();
});
panic.addEventListener("blur", holdReset);

// ---- start ---------------------------------------------------------------------------

$("send-now").addEventListener("click", () => flush());
$("logout").addEventListener("submit", async (event) => {
  // the page copy in the service worker's cache belongs to this session
  event.preventDefault();
  try {
    if (window.caches) {
      for (const key of await caches.keys()) if (key.startsWith("patrol-")) await caches.delete(key);
    }
  } finally {
    event.target.submit();
  }
});
window.addEventListener("online", () => { reachable = true; render(); flush(); });
window.addEventListener("offline", render);
window.addEventListener("storage", (event) => {
  if (event.key && event.key.endsWith(`.${boot.user}`)) render();
});
setInterval(flush, FLUSH_EVERY_MS);

if ("serviceWorker" in navigator) {
  // scope "/p": this page and the QR URLs /p/…, not the wall screen or the login form
  navigator.serviceWorker.register("/sw.js", { scope: "/p" }).catch(() => {});
}

const scan = landing();
if (scan) {
  // the address bar back to /patrol: a reload must not record the scan again
  window.history.replaceState(null, "", "/patrol");
  record({ kind: "scan", method: "qr", checkpoint: scan.checkpoint, sig: scan.sig || "" });
} else {
  render();
  flush();
}

// ---- reporting a problem found on the round (报事) ------------------------------------

function lastCheckpoint() {
  const done = load("history").find((h) => h.kind !== "panic" && h.kind !== "report" && h.checkpoint);
  return done ? done.checkpoint : null;
}

function readPhoto(file) {
  return new Promise((resolve) => {
    if (!file) { resolve(null); return; }
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => resolve(null);
    reader.readAsDataURL(file);
  });
}

$("report-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const note = $("report-note").value.trim();
  if (note.length < 2) { $("report-note").focus(); return; }
  const file = $("report-photo").files[0];
  if (file && file.size > 2 * 1024 * 1024) { show("bad", t("patrol_photo_too_big")); return; }
  const photo = await readPhoto(file);
  record({ kind: "report", method: "report", category: $("report-category").value, note, photo, checkpoint: lastCheckpoint() });
  $("report-note").value = "";
  $("report-photo").value = "";
  $("report-box").open = false;
});
