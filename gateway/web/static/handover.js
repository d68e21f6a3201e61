// Printable handover record: local times and the print link (no inline script: CSP).
"use strict";
const zone = document.body.dataset.zone;
const locale = document.body.dataset.lang === "en" ? "en-GB" : "zh-CN";
for (const el of document.querySelectorAll("[data-time]")) {
  const value = el.getAttribute("data-time");
  if (value) el.textContent = new Date(value).toLocaleString(locale, { timeZone: zone, hour12: false });
}
const link = document.getElementById("print");
if (link) link.addEventListener("click", (e) => { e.preventDefault(); window.print(); });
