// Printable handover record: local times and the print link (no inline script: CSP).
"use strict";
for (const el of document.querySelectorAll("[data-time]")) {
  const value = el.getAttribute("data-time");
  if (value) el.textContent = new Date(value).toLocaleString();
}
const link = document.getElementById("print");
if (link) link.addEventListener("click", (e) => { e.preventDefault(); window.print(); });
