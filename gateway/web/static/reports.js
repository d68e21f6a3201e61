// Guard-room reports (报事/报修): take a report, follow it through its closed loop,
// see this month's figures. Needs common.js. Each open report says at a glance
// how long is left to its on-scene commitment and what the guard does next.
"use strict";

const URGENCIES = ["P1", "P2", "P3"];
let config = null;
let reports = [];

function lang(zh, en) {
  return boot.lang === "zh" ? zh : en;
}

// ---- the form ---------------------------------------------------------------------

function fillSubcategories() {
  const category = config.categories.find((c) => c.id === $("r-category").value);
  $("r-subcategory").replaceChildren(
    ...(category ? category.subcategories : []).map((s) => el("option", { value: s.id }, lang(s.name, s.name_en))));
}

function commitmentText(c) {
  if (c.on_scene_min) return `${lang(c.name, c.name_en)} — ${lang(`${c.on_scene_min}分钟内到场`, `on scene within ${c.on_scene_min} min`)}`;
  return `${lang(c.name, c.name_en)} — ${lang(`当天${c.same_day_until}前或约定时间`, `same day by ${c.same_day_until}, or the agreed time`)}`;
}

function buildForm() {
  $("r-category").replaceChildren(
    ...config.categories.map((c) => el("option", { value: c.id }, lang(c.name, c.name_en))));
  fillSubcategories();
  $("r-category").addEventListener("change", fillSubcategories);
  const box = $("r-urgency");
  for (const u of URGENCIES) {
    const id = `r-urgency-${u}`;
    box.append(el("label", { for: id },
      el("input", { type: "radio", name: "urgency", id, value: u, checked: u === "P2" }),
      el("span", { class: `badge ${u}` }, u),
      commitmentText(config.commitments[u])));
  }
  box.addEventListener("change", () => {
    $("agreed-box").hidden = document.querySelector("input[name=urgency]:checked").value !== "P3";
  });
  $("report-form").addEventListener("submit", submitReport);
}

function formValue(id) {
  const value = $(id).value.trim();
  return value === "" ? null : value;
}

async function submitReport(event) {
  event.preventDefault();
  const urgency = document.querySelector("input[name=urgency]:checked").value;
  const body = {
    category: $("r-category").value,
    subcategory: $("r-subcategory").value,
    urgency,
    description: $("r-description").value.trim(),
    building: formValue("r-building"),
    unit: formValue("r-unit"),
    area: formValue("r-area"),
    channel: $("r-channel").value,
    reporter_kind: $("r-reporter").value,
    contact_name: formValue("r-contact-name"),
    contact_phone: formValue("r-contact-phone"),
  };
  const agreed = formValue("r-agreed");
  // The agreed time is site time as typed; the gateway reads it in the site's zone
  // (this PC's own clock zone may differ).
  if (urgency === "P3" && agreed) body.agreed_time = agreed;
  const error = $("form-error");
  const result = await api("POST", "/api/v1/reports", body);
  if (!result.ok) {
    error.textContent = `${t("failed")}: ${detail(result)}`;
    error.hidden = false;
    return;
  }
  error.hidden = true;
  $("report-form").reset();
  fillSubcategories();
  $("agreed-box").hidden = true;
  notify(`${t("rp_taken")}: ${result.data.report_id}`);
  await refreshReports();
  await refreshStats();
}

// ---- open reports -----------------------------------------------------------------

function nextStep(r) {
  if (r.state === "resolved") return t(r.follow_up_owed && !r.follow_up_made ? "rp_next_follow_up" : "rp_next_close");
  return t(`rp_next_${r.state}`);
}

function deadline(r) {
  if (r.on_scene_at) {
    return el("span", { class: r.on_time ? "" : "late countdown" }, t(r.on_time ? "rp_reached_on_time" : "rp_reached_late"));
  }
  if (r.resolved_at) return null;
  return el("span", { class: "countdown", "data-by": r.respond_by, "data-label": t("rp_on_scene_in") }, "");
}

async function step(r, path, body) {
  const result = await api("POST", `/api/v1/reports/${encodeURIComponent(r.report_id)}/${path}`, body || {});
  if (!result.ok) {
    notify(`${t("failed")}: ${detail(result)}`);
    return;
  }
  notify(`${t("done")}: ${r.report_id}`);
  await refreshReports();
  await refreshStats();
}

function note(values) {
  return values.note ? values.note : null;
}

function buttons(r) {
  if (!boot.may.write) return [];
  const b = [];
  const add = (label, handler, primary) => b.push(el("button", { type: "button", class: primary ? "primary" : null, onclick: handler }, label));
  const waiting = ["open", "dispatched", "on_scene"].includes(r.state);
  if (waiting) {
    add(t("rp_dispatch"), async () => {
      const v = await ask(t("rp_dispatch"), [{ name: "to", label: t("rp_dispatch_to"), required: true }, { name: "note", label: t("rp_note") }]);
      if (v) await step(r, "dispatch", { to: v.to, note: note(v) });
    }, r.state === "open");
  }
  if (r.state === "open" || r.state === "dispatched") {
    add(t("rp_on_scene"), async () => {
      const v = await ask(t("rp_on_scene"), [{ name: "note", label: t("rp_note") }]);
      if (v) await step(r, "on-scene", { note: note(v) });
    }, r.state === "dispatched");
  }
  if (waiting) {
    add(t("rp_resolve"), async () => {
      const v = await ask(t("rp_resolve"), [{ name: "note", label: t("rp_note"), multiline: true }]);
      if (v) await step(r, "resolve", { note: note(v) });
    }, r.state === "on_scene");
  }
  if (r.state === "resolved") {
    add(t("rp_follow_up"), async () => {
      const options = ["satisfied", "unsatisfied", "unreachable"].map((k) => [k, t(`rp_result_${k}`)]);
      const v = await ask(t("rp_follow_up"), [{ name: "result", label: t("rp_follow_up_result"), options }, { name: "note", label: t("rp_note") }]);
      if (v) await step(r, "follow-up", { result: v.result, note: note(v) });
    }, r.follow_up_owed && !r.follow_up_made);
    if (boot.may.close) {
      add(t("rp_close"), async () => {
        const v = await ask(t("rp_close"), [{ name: "note", label: t("rp_note") }]);
        if (v) await step(r, "close", { note: note(v) });
      }, !r.follow_up_owed || r.follow_up_made);
    }
  }
  add(t("rp_hand_over"), async () => {
    const options = config.staff.filter((n) => n !== r.owner).map((n) => [n, n]);
    const v = await ask(t("rp_hand_over"), [{ name: "to", label: t("rp_hand_over_to"), options }, { name: "note", label: t("rp_note") }]);
    if (v) await step(r, "handover", { to: v.to, note: note(v) });
  });
  add(t("rp_note"), async () => {
    const v = await ask(t("rp_note"), [{ name: "text", label: t("note_text"), required: true, multiline: true }]);
    if (v) await step(r, "notes", { text: v.text });
  });
  if (boot.may.close) {
    add(t("rp_cancel"), async () => {
      const v = await ask(t("rp_cancel"), [{ name: "reason", label: t("reason"), required: true }]);
      if (v) await step(r, "cancel", { reason: v.reason });
    });
  }
  if (boot.may.contact && r.reporter_masked) {
    add(t("rp_show_contact"), async (event) => {
      const result = await api("GET", `/api/v1/reports/${encodeURIComponent(r.report_id)}/contact`);
      if (!result.ok) {
        notify(`${t("failed")}: ${detail(result)}`);
        return;
      }
      const shown = [result.data.name, result.data.phone].filter(Boolean).join(" ");
      event.target.replaceWith(el("span", { class: "contact" }, shown));
    });
  }
  return b;
}

function reportCard(r) {
  const where = r.location;
  return el("article", { class: `alarm report ${r.urgency}${r.overdue && !r.on_scene_at ? " overdue" : ""}`, "data-id": r.report_id },
    el("div", { class: "head" },
      el("span", { class: `badge ${r.urgency}` }, lang(r.urgency_name, r.urgency_name_en)),
      el("span", { class: "name" }, `${lang(r.category_name, r.category_name_en)} · ${lang(r.subcategory_name, r.subcategory_name_en)}`),
      el("span", {}, where),
      deadline(r)),
    el("p", { class: "desc" }, r.description),
    el("p", { class: "next" }, `${t("rp_next")}: ${nextStep(r)}`),
    el("p", { class: "meta" },
      `${r.report_id} · ${t(`rp_state_${r.state}`)} · ${t("rp_owner")}: ${r.owner}`,
      r.handler ? ` · ${t("rp_handler")}: ${r.handler}` : "",
      r.reporter_masked ? ` · ${t("rp_reporter")}: ${r.reporter_masked}` : "",
      ` · ${t("ticket")}: ${r.ticket_no || t("no_ticket")}`,
      r.follow_up_owed && !r.follow_up_made ? ` · ${t("rp_follow_up_due")}` : ""),
    el("div", { class: "actions" }, buttons(r)),
    el("details", {},
      el("summary", {}, t("timeline")),
      el("ol", { class: "timeline" }, r.timeline.map((s) =>
        el("li", {}, `${fmtTime(s.at)} ${s.what}${s.to ? ` → ${s.to}` : ""} · ${s.by}${s.note ? ` — ${s.note}` : ""}`)))));
}

function renderReports() {
  const order = { P1: 0, P2: 1, P3: 2 };
  const list = [...reports].sort((a, b) =>
    Number(Boolean(b.overdue && !b.on_scene_at)) - Number(Boolean(a.overdue && !a.on_scene_at))
    || order[a.urgency] - order[b.urgency]
    || a.respond_by.localeCompare(b.respond_by));
  const overdue = list.filter((r) => r.overdue && !r.on_scene_at).length;
  $("open-count").textContent = `(${list.length} ${t("rp_open_count")}${overdue ? `, ${overdue} ${t("rp_overdue_count")}` : ""})`;
  $("report-list").replaceChildren(...(list.length ? list.map(reportCard) : [el("p", { class: "quiet" }, t("rp_none_open"))]));
  tickCountdowns();
}

async function refreshReports() {
  const result = await api("GET", "/api/v1/reports?scope=open");
  if (!result.ok) return;
  $("offline").hidden = true;
  reports = result.data.reports;
  // Do not redraw under an open dialog: the guard is typing into it.
  if (!$("dialog").open) renderReports();
}

// ---- this month's figures -----------------------------------------------------------

function pct(value) {
  return value === null || value === undefined ? "—" : `${value}%`;
}

async function refreshStats() {
  const month = $("month").value;
  const result = await api("GET", `/api/v1/reports/stats?month=${encodeURIComponent(month)}`);
  if (!result.ok) return;
  const s = result.data;
  $("stats").replaceChildren(
    el("table", {},
      el("thead", {}, el("tr", {}, [t("rp_urgency"), t("rp_count"), t("rp_on_time_rate"), t("rp_avg_to_scene")].map((h) => el("th", {}, h)))),
      el("tbody", {}, s.by_urgency.map((r) => el("tr", {},
        el("td", {}, el("span", { class: `badge ${r.urgency}` }, lang(config.commitments[r.urgency].name, config.commitments[r.urgency].name_en))),
        el("td", {}, String(r.reports)),
        el("td", { class: r.on_time_pct !== null && r.on_time_pct < 100 ? "bad" : null }, pct(r.on_time_pct)),
        el("td", {}, r.avg_min_to_scene === null ? "—" : String(r.avg_min_to_scene)))))),
    el("p", {}, `${t("rp_follow_up_rate")}: ${pct(s.follow_up.pct)} (${s.follow_up.made}/${s.follow_up.owed})`));
  const names = Object.fromEntries(config.categories.map((c) => [c.id, lang(c.name, c.name_en)]));
  $("weekly").replaceChildren(s.weekly.length
    ? el("table", {},
      el("thead", {}, el("tr", {}, [t("rp_week_of"), t("rp_category"), t("rp_count")].map((h) => el("th", {}, h)))),
      el("tbody", {}, s.weekly.map((w) => el("tr", {}, el("td", {}, w.week), el("td", {}, names[w.category] || w.category), el("td", {}, String(w.reports))))))
    : el("p", { class: "quiet" }, t("none")));
  $("csv").replaceChildren(...["register", "summary", "weekly"].map((table) =>
    el("a", { href: `/api/v1/reports/export.csv?month=${encodeURIComponent(month)}&table=${table}` }, t(`rp_csv_${table}`))));
}

// ---- start --------------------------------------------------------------------------

async function start() {
  const result = await api("GET", "/api/v1/reports/categories");
  if (!result.ok) {
    notify(`${t("failed")}: ${detail(result)}`);
    return;
  }
  config = result.data;
  if (boot.may.write) buildForm();
  else $("report-form").hidden = true;
  const now = new Date().toLocaleString("sv-SE", { timeZone: boot.zone }).slice(0, 7);
  $("month").value = now;
  $("month").addEventListener("change", refreshStats);
  await refreshReports();
  await refreshStats();
  setInterval(refreshReports, 5000);
  setInterval(refreshStats, 60000);
  setInterval(tickCountdowns, 1000);
}

start();
