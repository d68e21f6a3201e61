// What every guard-room page script needs: its boot data, strings, DOM building,
// the JSON API with the session's CSRF token, a status line and a small dialog.
// Loaded before the page's own script. Text is always set with textContent (never
// innerHTML): a device's or a person's text can never become markup or script.
"use strict";

const boot = JSON.parse(document.body.dataset.boot);
const T = boot.strings;
const $ = (id) => document.getElementById(id);

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

// ---- countdowns -------------------------------------------------------------------

function duration(seconds) {
  if (seconds >= 3600) {
    return `${Math.floor(seconds / 3600)}h ${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
  }
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

// Every ".countdown" with a data-by time counts down to it, once a second; data-label
// says what it counts down to (the alarm board's default: respond within).
function tickCountdowns() {
  const now = Date.now();
  for (const node of document.querySelectorAll(".countdown[data-by]")) {
    const left = Math.round((Date.parse(node.dataset.by) - now) / 1000);
    if (left < 0) {
      node.textContent = `${t("overdue")} ${duration(-left)}`;
      node.classList.add("late");
    } else {
      node.textContent = `${node.dataset.label || t("respond_in")} ${duration(left)}`;
      node.classList.remove("late");
    }
  }
}
