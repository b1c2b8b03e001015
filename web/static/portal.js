// Outlink portal: small progressive enhancements; every page works without this file.
// Loaded from 'self' only (CSP forbids inline script). Text from the server is
// inserted with textContent, never innerHTML.
"use strict";

(function () {
  const PRESENCE_REFRESH_MS = 15000;

  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function badge(online, revoked) {
    const span = document.createElement("span");
    const state = revoked ? "revoked" : online ? "online" : "offline";
    span.className = "badge badge-" + state;
    span.textContent = state;
    return span;
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (seconds >= 86400) return Math.floor(seconds / 86400) + " d ago";
    if (seconds >= 3600) return Math.floor(seconds / 3600) + " h ago";
    if (seconds >= 60) return Math.floor(seconds / 60) + " min ago";
    return seconds + " s ago";
  }

  // Live presence: refresh the status badges of the devices on this page.
  function refreshPresence() {
    const rows = Array.from(document.querySelectorAll("[data-device-id]"));
    if (!rows.length) return;
    const ids = rows.map((r) => r.dataset.deviceId).join(",");
    fetch("/api/v1/presence?ids=" + encodeURIComponent(ids), {credentials: "same-origin"})
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        if (!data) return;
        rows.forEach((row) => {
          const info = data[row.dataset.deviceId];
          const cell = row.querySelector(".status-cell");
          if (!info || !cell) return;
          const revoked = cell.querySelector(".badge-revoked") !== null;
          cell.replaceChildren(badge(info.online, revoked));
          const seen = row.querySelector(".last-seen");
          if (seen && row.tagName === "TR") seen.textContent = ago(info.last_seen);
        });
      })
      .catch(() => {});
  }

  onReady(function () {
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
    document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
      select.addEventListener("change", () => select.form.submit());
    });
    if (document.querySelector("[data-presence]")) {
      window.setInterval(refreshPresence, PRESENCE_REFRESH_MS);
    }
  });
})();
