// Bemi audit trail UI: the only script. Pages work without it; it adds the live tail of the
// Changes page. Rows come from the server already escaped.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const body = document.querySelector("tbody[data-feed]");
  if (!body) return;
  const poll = async () => {
    const newest = body.dataset.newest;
    const url = body.dataset.feed + (newest ? "&newer=" + encodeURIComponent(newest) : "");
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        const newer = response.headers.get("x-bemi-newest");
        const rows = await response.text();
        if (newer && rows.trim() !== "") {
          body.querySelector("tr.empty")?.remove();
          body.insertAdjacentHTML("afterbegin", rows);
          body.dataset.newest = newer;
        }
      }
    } catch (_) {
      // The server may be restarting; try again at the next tick.
    }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
});
