// The guard-room screen: alarms live from the SSE stream, the rest from the JSON API.
// Everything shown is set with textContent (never innerHTML): a device's or a
// person's text can never become markup or script (the page's CSP forbids it too).
"use strict";

const boot = JSON.parse(document.body.dataset.boot);
const T = boot.strings;
const $ = (id) => document.getElementById(id);
const SHOWN = ["unacknowledged", "rtn_unacknowledged", "acknowledged"];
const HIDDEN = ["shelved", "suppressed", "out_of_service"];
const ORDER = { P1: 0, P2: 1, P3: 2, P4: 3 };
const SHELVE_CHOICES = [["1800", t("minutes_30")], ["7200", t("hours_2")], ["28800", t("hours_8")], ["86400", t("hours_24")]];
const alarms = new Map();
let flood = false;
let tickets = {};

function t(key) {
  return T[key] !== undefined ? T[key] : key;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtTime(iso) {
  if (!iso) return "";
  const locale = boot.lang === "zh" ? "zh-CN" : "en-GB";
  return new Date(iso).toLocaleString(locale, { timeZone: boot.zone, hour12: false });
}

async function api(method, path, body) {
  const headers = { "X-CSRF-Token": boot.csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    $("offline").hidden = false;
    return { ok: false, status: 0, data: { detail: String(error) } };
  }
  if (response.status === 401) {
    window.location.assign("/login");
    return { ok: false, status: 401, data: {} };
  }
  let data = {};
  try { data = await response.json(); } catch (error) { data = {}; }
  return { ok: response.ok, status: response.status, data };
}

// A status line, not window.alert: an alert would freeze the board, its countdowns
// and the alarm sound until someone pressed OK.
let noticeTimer = null;
function notify(text) {
  const box = $("notice");
  box.textContent = text;
  box.className = text.startsWith(t("failed")) ? "banner notice bad" : "banner notice";
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 10000);
}

function detail(result) {
  const d = result.data && result.data.detail;
  return typeof d === "string" ? d : JSON.stringify(d || result.status);
}

// ---- a small dialog for reasons, notes and confirmations --------------------------

function ask(title, fields) {
  const dialog = $("dialog");
  $("dialog-title").textContent = title;
  const body = $("dialog-body");
  body.replaceChildren();
  const inputs = {};
  for (const f of fields) {
    const id = `f-${f.name}`;
    body.append(el("label", { for: id }, f.label));
    let input;
    if (f.options) {
      input = el("select", { id }, f.options.map(([v, label]) => el("option", { value: v }, label)));
    } else if (f.multiline) {
      input = el("textarea", { id, rows: 4 });
    } else {
      input = el("input", { id, required: f.required, minlength: f.required ? 2 : null });
    }
    inputs[f.name] = input;
    body.append(input);
  }
  return new Promise((resolve) => {
    const form = $("dialog-form");
    const finish = (value) => {
      form.onsubmit = null;
      $("dialog-cancel").onclick = null;
      dialog.close();
      resolve(value);
    };
    form.onsubmit = (e) => {
      e.preventDefault();
      const values = {};
      for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
      const short = fields.find((f) => f.required && values[f.name].length < 2);
      if (short) {
        inputs[short.name].focus();
        return;
      }
      finish(values);
    };
    $("dialog-cancel").onclick = () => finish(null);
    dialog.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus(); else $("dialog-ok").focus();
  });
}

// ---- alarms -----------------------------------------------------------------------

function sortAlarms(list) {
  return list.sort((a, b) =>
    ORDER[a.priority] - ORDER[b.priority]
    || SHOWN.indexOf(a.state) - SHOWN.indexOf(b.state)
    || String(a.raised_at).localeCompare(String(b.raised_at)));
}

async function act(alarm, path, body) {
  const result = await api("POST", `/api/v1/alarms/${encodeURIComponent(alarm.alarm_id).replace(/%2F/g, "/")}/${path}`, body || {});
  if (!result.ok) {
    notify(`${t("failed")}: ${detail(result)}`);
    return;
  }
  alarms.set(result.data.alarm_id, result.data);
  render();
}

function alarmName(a) {
  return boot.lang === "zh" ? a.name : a.name_en;
}

function countdown(a) {
  if (a.acknowledged || !a.respond_by) return null;
  return el("span", { class: "countdown", "data-by": a.respond_by }, "");
}

function stepList(a) {
  if (!a.steps || !a.steps.length) return null;
  return el("ol", { class: "steps", "aria-label": t("steps") }, a.steps.map((s, i) => {
    const text = boot.lang === "zh" ? s.zh : s.en;
    if (s.done_at) {
      return el("li", { class: "done" }, `✓ ${text} — ${fmtTime(s.done_at)} ${s.by || ""}`);
    }
    const button = boot.may.acknowledge && a.occurrence
      ? el("button", {
        type: "button", "aria-label": `${t("step_done")}: ${text}`,
        onclick: () => act(a, `steps/${i + 1}`),
      }, t("step_done"))
      : null;
    return el("li", {}, text, button);
  }));
}

function alarmCard(a, extra) {
  const buttons = [];
  if (boot.may.acknowledge && !a.acknowledged) {
    buttons.push(el("button", { type: "button", class: "primary", onclick: () => act(a, "acknowledge") }, t("acknowledge")));
  }
  if (boot.may.acknowledge && a.active && !a.on_scene_at && a.occurrence) {
    buttons.push(el("button", { type: "button", onclick: () => act(a, "on-scene") }, t("on_scene")));
  }
  if (boot.may.acknowledge) {
    buttons.push(el("button", {
      type: "button",
      onclick: async () => {
        const v = await ask(t("add_note"), [{ name: "text", label: t("note_text"), multiline: true, required: true }]);
        if (v) act(a, "notes", { text: v.text });
      },
    }, t("add_note")));
  }
  if (boot.may.shelve && a.state !== "shelved") {
    buttons.push(el("button", {
      type: "button",
      onclick: async () => {
        const v = await ask(`${t("shelve")}: ${alarmName(a)}`, [
          { name: "reason", label: t("reason"), required: true },
          { name: "duration_s", label: t("duration"), options: SHELVE_CHOICES.filter(([v]) => Number(v) <= boot.shelve_max_s) },
        ]);
        if (v) act(a, "shelve", { reason: v.reason, duration_s: Number(v.duration_s) });
      },
    }, t("shelve")));
  }
  if (boot.may.shelve && a.state === "shelved") {
    buttons.push(el("button", { type: "button", onclick: () => act(a, "unshelve") }, t("unshelve")));
  }
  const ticket = tickets[a.occurrence];
  const escalated = (a.escalated_to || []).map((l) => (boot.lang === "zh" ? l.name : l.name_en)).join(" → ");
  return el("article", { class: `alarm ${a.priority} ${a.state}`, "data-alarm": a.alarm_id },
    el("div", { class: "head" },
      el("span", { class: `badge ${a.priority}` }, t(`priority_${a.priority}`)),
      el("span", { class: "name" }, alarmName(a)),
      el("span", { class: "state" }, t(`state_${a.state}`)),
      a.chattering ? el("span", { class: "badge" }, t("chattering")) : null,
      extra || null,
      countdown(a)),
    el("p", { class: "meta" }, `${t("where")}: `, el("strong", {}, a.location), ` · ${t("raised_at")}: ${fmtTime(a.raised_at)}`),
    a.incident ? el("p", { class: "meta" }, `${t("ticket")}: `, ticket && ticket.ticket_no ? `${ticket.ticket_no}${ticket.ticket_state ? ` (${ticket.ticket_state})` : ""}` : t("no_ticket")) : null,
    escalated ? el("p", { class: "meta" }, `${t("escalated_to")}: ${escalated}`) : null,
    a.on_scene_missed ? el("p", { class: "meta" }, el("strong", {}, t("on_scene_missed"))) : null,
    stepList(a),
    el("div", { class: "actions" }, buttons),
    el("details", {}, el("summary", {}, t("timeline")),
      el("ol", { class: "timeline" }, (a.timeline || []).map((e) => el("li", {}, `${fmtTime(e.at)} ${t(`what_${e.what}`)} · ${e.by === "gateway" ? t("by_gateway") : e.by}${e.note ? ` · ${e.note}` : ""}`)))));
}

function render() {
  const all = [...alarms.values()];
  const shown = sortAlarms(all.filter((a) => SHOWN.includes(a.state)));
  const hidden = all.filter((a) => HIDDEN.includes(a.state));
  const list = $("alarm-list");
  $("alarm-count").textContent = shown.length ? `(${shown.length})` : "";
  $("flood").hidden = !flood;
  if (!shown.length) {
    list.replaceChildren(el("p", { class: "quiet" }, t("no_alarms")));
  } else if (!flood) {
    list.replaceChildren(...shown.map((a) => alarmCard(a)));
  } else {
    const cards = shown.filter((a) => a.priority === "P1").map((a) => alarmCard(a));
    const groups = new Map();
    for (const a of shown.filter((x) => x.priority !== "P1")) {
      const key = a.group || a.alarm_id;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(a);
    }
    for (const members of groups.values()) {
      const first = members.find((m) => m.first_out) || members[0];
      const badge = members.length > 1 && first.first_out ? el("span", { class: "badge" }, t("first_out")) : null;
      cards.push(el("div", { class: "group" },
        alarmCard(first, badge),
        members.length > 1 ? el("p", { class: "meta" }, `+ ${members.length - 1} ${t("grouped")}`) : null));
    }
    list.replaceChildren(...cards);
  }
  $("hidden-box").hidden = !hidden.length;
  $("hidden-count").textContent = String(hidden.length);
  $("hidden-list").replaceChildren(...hidden.map((a) => alarmCard(a)));
  tickCountdowns();
  sound.update(shown);
}

function tickCountdowns() {
  const now = Date.now();
  for (const node of document.querySelectorAll(".countdown")) {
    const left = Math.round((Date.parse(node.dataset.by) - now) / 1000);
    if (left < 0) {
      node.textContent = `${t("overdue")} ${Math.floor(-left / 60)}:${String(-left % 60).padStart(2, "0")}`;
      node.classList.add("late");
    } else {
      node.textContent = `${t("respond_in")} ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    }
  }
}

async function refreshBoard() {
  const result = await api("GET", "/api/v1/alarms");
  if (!result.ok) return;
  // Upsert only: in flood mode the board lists grouped alarms by id, and the
  // stream already keeps every alarm; this call adds central's ticket numbers.
  for (const a of [...result.data.alarms, ...result.data.hidden, ...result.data.groups.map((g) => g.first_out)]) {
    alarms.set(a.alarm_id, a);
    if (a.occurrence) tickets[a.occurrence] = { ticket_no: a.ticket_no, ticket_state: a.ticket_state };
  }
  flood = result.data.flood;
  render();
}

function connect() {
  const stream = new EventSource("/api/v1/alarms/stream");
  stream.addEventListener("snapshot", (e) => {
    $("offline").hidden = true;
    const data = JSON.parse(e.data);
    alarms.clear();
    for (const a of data.alarms) alarms.set(a.alarm_id, a);
    render();
    refreshBoard();
  });
  stream.addEventListener("alarm", (e) => {
    const a = JSON.parse(e.data).alarm;
    alarms.set(a.alarm_id, a);
    render();
  });
  stream.addEventListener("flood", (e) => {
    flood = JSON.parse(e.data).state === "started";
    render();
  });
  stream.addEventListener("resync", () => { stream.close(); connect(); });
  stream.onerror = () => { $("offline").hidden = false; };
}

// ---- the alarm sound: P1/P2 unacknowledged, until the guard silences it ------------

const sound = {
  context: null,
  silenced: new Set(),
  pending: [],
  timer: null,
  update(shown) {
    this.pending = shown.filter((a) => !a.acknowledged && (a.priority === "P1" || a.priority === "P2"))
      .map((a) => `${a.alarm_id}@${a.occurrence}`);
    const loud = this.pending.filter((k) => !this.silenced.has(k));
    const button = $("sound");
    if (this.context && this.context.state === "suspended") button.textContent = t("sound_blocked");
    else button.textContent = loud.length ? t("silence") : (this.pending.length ? t("sound_off") : t("sound_on"));
    if (loud.length && !this.timer) this.timer = setInterval(() => this.beep(), 1500);
    if (!loud.length && this.timer) { clearInterval(this.timer); this.timer = null; }
  },
  beep() {
    if (!this.context) {
      try { this.context = new AudioContext(); } catch (error) { return; }
    }
    if (this.context.state !== "running") return;
    const osc = this.context.createOscillator();
    const gain = this.context.createGain();
    osc.frequency.value = 880;
    gain.gain.value = 0.2;
    osc.connect(gain).connect(this.context.destination);
    osc.start();
    osc.stop(this.context.currentTime + 0.35);
  },
  click() {
    if (!this.context) {
      try { this.context = new AudioContext(); } catch (error) { return; }
    }
    if (this.context.state === "suspended") { this.context.resume().then(render); return; }
    for (const key of this.pending) this.silenced.add(key);
    render();
  },
};
try { sound.context = new AudioContext(); } catch (error) { sound.context = null; }
$("sound").addEventListener("click", () => sound.click());

// ---- site status, gates, chart, handover ------------------------------------------

function countsTable(devices) {
  const states = ["online", "degraded", "offline", "unknown"];
  return el("table", {},
    el("tr", {}, el("th", {}, ""), states.map((s) => el("th", { scope: "col" }, t(s)))),
    Object.entries(devices).map(([kind, counts]) => el("tr", {},
      el("th", { scope: "row" }, t(`kind_${kind}`)),
      states.map((s) => el("td", { class: (s === "offline" || s === "degraded") && counts[s] ? "bad" : null }, String(counts[s] || 0))))));
}

async function refreshStatus() {
  const result = await api("GET", "/api/v1/screen/status");
  if (!result.ok) return;
  const s = result.data;
  $("devices").replaceChildren(countsTable(s.devices),
    ...s.down.slice(0, 8).map((d) => el("p", { class: "meta" }, `${t(d.state)}: ${d.device} (${t(`kind_${d.kind}`)})`)));
  const m = s.meters;
  $("meters").replaceChildren(el("table", {},
    el("tr", {}, el("th", { scope: "row" }, t("meters_offline")), el("td", { class: m.offline ? "bad" : null }, `${m.offline} / ${m.total}`)),
    el("tr", {}, el("th", { scope: "row" }, t("buildings_in_outage")), el("td", { class: m.buildings_in_outage.length ? "bad" : null }, m.buildings_in_outage.join(", ") || t("none"))),
    el("tr", {}, el("th", { scope: "row" }, t("planned_outages")), el("td", {}, m.planned_outages.map((n) => `${t(`utility_${n.utility}`)} ${n.scope.join(",")} ${fmtTime(n.starts_at)}–${fmtTime(n.ends_at)}`).join("; ") || t("none"))),
    el("tr", {}, el("th", { scope: "row" }, t("closes_owed")), el("td", { class: m.closes_owed ? "bad" : null }, String(m.closes_owed)))));
  $("parking").replaceChildren(el("table", {}, s.parking.map((lot) => el("tr", {},
    el("th", { scope: "row" }, lot.name),
    el("td", { class: lot.full ? "bad" : null }, lot.full ? t("lot_full") : `${t("lot_free")} ${lot.free} / ${lot.spaces}`),
    el("td", {}, Object.entries(lot.classes).map(([c, v]) => `${t(`class_${c}`)} ${v.full ? t("lot_full") : v.free}`).join(" · "))))));
  if (s.sync) {
    $("sync").replaceChildren(el("table", {},
      Object.entries(s.sync.streams).map(([name, st]) => el("tr", {},
        el("th", { scope: "row" }, t(`stream_${name}`)),
        el("td", { class: st.backlog > 1000 ? "bad" : null }, `${t("sync_backlog")} ${st.backlog}`),
        el("td", {}, `${t("sync_last_success")} ${fmtTime(st.last_success) || "—"}`))),
      el("tr", {}, el("th", { scope: "row" }, t("dead_letters")), el("td", { class: s.sync.dead_letters ? "bad" : null }, String(s.sync.dead_letters)), el("td", {}, ""))));
  } else {
    $("sync").replaceChildren(el("p", { class: "quiet" }, t("none")));
  }
  if (!s.patrol) {
    $("patrol").replaceChildren(el("p", { class: "quiet" }, t("patrol_not_ready")));
  } else {
    const rows = s.patrol.in_progress.map((r) => el("tr", {},
      el("th", { scope: "row" }, `${t("patrol_in_progress")}: ${r.route_name}`),
      el("td", {}, `${r.done.length} / ${r.total}`),
      el("td", { class: r.overdue.length ? "bad" : null }, r.overdue.length ? `${t("patrol_overdue")}: ${r.overdue.join(", ")}` : "")));
    for (const task of s.patrol.tasks || []) {
      rows.unshift(el("tr", {},
        el("th", { scope: "row", class: "bad" }, `${t("patrol_task")}: ${task.name}`),
        el("td", {}, el("span", { class: "countdown", "data-by": task.due }, "")),
        el("td", {}, task.alarm_id)));
    }
    for (const r of s.patrol.recent.slice(-4).reverse()) {
      rows.push(el("tr", {},
        el("th", { scope: "row" }, `${fmtTime(r.start)} ${r.route_name}`),
        el("td", { class: r.completion_pct < 100 ? "bad" : null }, r.started ? `${r.completion_pct}%` : t("patrol_not_started")),
        el("td", { class: r.missed.length ? "bad" : null }, r.missed.length ? `${t("patrol_missed_points")}: ${r.missed.join(", ")}` : "")));
    }
    $("patrol").replaceChildren(rows.length ? el("table", {}, rows) : el("p", { class: "quiet" }, t("none")));
  }
}

const BAD_EVENTS = ["access.denied", "access.tailgating", "access.duress", "door.forced", "door.held_open", "barrier.fault"];

async function refreshFeed() {
  const result = await api("GET", "/api/v1/access/feed?limit=30");
  if (!result.ok) return;
  $("masked-note").hidden = !result.data.masked;
  $("feed").replaceChildren(...result.data.events.map((e) => {
    const p = e.payload;
    const who = [p.plate, p.card, p.vehicle_class ? t(`class_${p.vehicle_class}`) : null].filter(Boolean).join(" ");
    return el("li", { class: BAD_EVENTS.includes(e.kind) ? "bad" : null },
      `${fmtTime(e.at)} ${e.device} ${t(`ev_${e.kind}`)} ${who}`);
  }));
}

function commandButtons() {
  if (!boot.may.command) return;
  $("commands").replaceChildren(...boot.access_points.map((p) => {
    const barrier = p.kind === "barrier";
    const label = `${barrier ? t("remote_raise") : t("remote_open")}: ${p.name}`;
    return el("button", {
      type: "button", "data-device": p.id,
      onclick: async () => {
        const v = await ask(label, [{ name: "reason", label: t("command_reason"), required: true }]);
        if (!v) return;
        const action = barrier ? "raise_barrier" : "open_door";
        const result = await api("POST", `/api/v1/access/${encodeURIComponent(p.id)}/commands`, { action, reason: v.reason });
        notify(result.ok ? `${t("command_sent")}: ${p.name}` : `${t("failed")}: ${detail(result)}`);
      },
    }, label);
  }));
}

async function refreshChart() {
  const result = await api("GET", "/api/v1/alarms/per-hour");
  if (!result.ok) return;
  const hours = result.data.hours;
  const top = Math.max(1, ...hours.map((h) => h.alarms));
  $("chart").replaceChildren(...hours.map((h) => {
    const bar = el("span", { title: `${fmtTime(h.hour)}: ${h.alarms}` });
    bar.style.height = `${Math.round((100 * h.alarms) / top)}%`; // CSSOM: allowed by the CSP
    return bar;
  }));
}

function bars(values, top, cls) {
  return values.map((v) => {
    const bar = el("span", { class: cls, title: v === null ? "—" : String(v) });
    bar.style.height = v === null ? "0" : `${Math.max(1, Math.round((100 * v) / top))}%`;
    return bar;
  });
}

let building = null;

async function refreshCharts() {
  const query = building ? `?building=${encodeURIComponent(building)}` : "";
  const result = await api("GET", `/api/v1/screen/charts${query}`);
  if (!result.ok) return;
  const { parking, consumption } = result.data;
  $("occupancy").replaceChildren(...parking.map((lot) => el("div", { class: "lot-chart" },
    el("p", { class: "meta" }, `${lot.name}: ${lot.cars[lot.cars.length - 1] || 0} / ${lot.spaces}`),
    el("div", { class: "chart", role: "img", "aria-label": lot.name }, bars(lot.cars, Math.max(1, lot.spaces), "")))));
  const select = $("building");
  if (select.options.length !== consumption.buildings.length) {
    select.replaceChildren(...consumption.buildings.map((b) => el("option", { value: b }, b)));
  }
  select.value = consumption.building || "";
  select.hidden = !consumption.buildings.length;
  const today = consumption.today;
  const before = consumption.yesterday;
  const top = Math.max(0.001, ...today.filter((v) => v !== null), ...before.filter((v) => v !== null));
  const pairs = [];
  for (let h = 0; h < 24; h += 1) {
    pairs.push(...bars([h < today.length ? today[h] : null], top, "today"));
    pairs.push(...bars([before[h]], top, "yesterday"));
    pairs.push(el("span", { class: "gap" }));
  }
  $("consumption").replaceChildren(...pairs);
}
$("building").addEventListener("change", (e) => { building = e.target.value; refreshCharts(); });

async function refreshHandover() {
  const box = $("handover");
  if (!boot.may.handover) return;
  const result = await api("GET", "/api/v1/handovers");
  if (!result.ok) return;
  const make = el("button", {
    type: "button", class: "primary",
    onclick: async () => {
      const v = await ask(t("handover_create"), [
        { name: "notes", label: t("handover_notes"), multiline: true },
        { name: "staffing", label: t("handover_staffing") },
      ]);
      if (!v) return;
      const made = await api("POST", "/api/v1/handovers", v);
      if (!made.ok) { notify(`${t("failed")}: ${detail(made)}`); return; }
      refreshHandover();
    },
  }, t("handover_create"));
  const rows = result.data.handovers.slice(0, 5).map((h) => el("li", {},
    el("a", { href: `/handovers/${encodeURIComponent(h.id)}` }, `${fmtTime(h.created_at)} ${h.outgoing}`),
    h.incoming ? ` → ${h.incoming}` : ` · ${t("handover_waiting")} `,
    !h.incoming && h.outgoing !== boot.user ? el("button", {
      type: "button",
      onclick: async () => {
        const signed = await api("POST", `/api/v1/handovers/${encodeURIComponent(h.id)}/sign`);
        if (!signed.ok) notify(`${t("failed")}: ${detail(signed)}`);
        refreshHandover();
      },
    }, t("handover_sign")) : null));
  box.replaceChildren(make, el("ul", {}, rows));
}

commandButtons();
connect();
refreshStatus();
refreshFeed();
refreshChart();
refreshCharts();
refreshHandover();
setInterval(tickCountdowns, 1000);
setInterval(refreshStatus, 5000);
setInterval(refreshFeed, 3000);
setInterval(refreshBoard, 15000);
setInterval(refreshChart, 60000);
setInterval(refreshCharts, 60000);
setInterval(refreshHandover, 30000);
