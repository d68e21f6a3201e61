// The guard-room screen: alarms live from the SSE stream, the rest from the JSON API.
// Everything shown is set with textContent (never innerHTML): a device's or a
// person's text can never become markup or script (the page's CSP forbids it too).
"use strict";

const SHOWN = ["unacknowledged", "rtn_unacknowledged", "acknowledged"];
const HIDDEN = ["shelved", "suppressed", "out_of_service"];
const ORDER = { P1: 0, P2: 1, P3: 2, P4: 3 };
const SHELVE_CHOICES = [["1800", t("minutes_30")], ["7200", t("hours_2")], ["28800", t("hours_8")], ["86400", t("hours_24")]];
const alarms = new Map();
let flood = false;
let tickets = {};


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

// The link to the reports page says how many are open and how many overdue.
async function refreshReportCount() {
  if (!boot.may.reports) return;
  const result = await api("GET", "/api/v1/reports?scope=open");
  if (!result.ok) return;
  const open = result.data.reports;
  const late = open.filter((r) => r.overdue && !r.on_scene_at).length;
  const link = $("reports-link");
  link.textContent = `${t("reports")} (${open.length} ${t("rp_open_count")}${late ? `, ${late} ${t("rp_overdue_count")}` : ""})`;
  link.classList.toggle("late", late > 0);
}

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
refreshReportCount();
setInterval(tickCountdowns, 1000);
setInterval(refreshStatus, 5000);
setInterval(refreshFeed, 3000);
setInterval(refreshBoard, 15000);
setInterval(refreshChart, 60000);
setInterval(refreshCharts, 60000);
setInterval(refreshHandover, 30000);
setInterval(refreshReportCount, 5000);
