// The station screen's only script (served as a file: the page's CSP allows no inline script).
// The server renders the page already showing the station; this keeps it current: each event on
// /events means "something changed", and the page fetches the re-rendered screen in its language.
"use strict";

(function () {
  const body = document.body;
  const screen = document.getElementById("screen");
  const conn = document.getElementById("conn");
  let inFlight = false;
  let again = false;

  function openDetails() {
    return new Set(Array.from(screen.querySelectorAll("details[open]")).map((d) => d.dataset.key));
  }

  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      do {
        again = false;
        const response = await fetch("/screen?lang=" + encodeURIComponent(body.dataset.lang), { cache: "no-store" });
        if (!response.ok) break;
        const html = await response.text();
        const keep = openDetails();  // an officer reading a card's details keeps it open across updates
        screen.innerHTML = html;
        screen.querySelectorAll("details").forEach((d) => { if (keep.has(d.dataset.key)) d.open = true; });
        await new Promise((resolve) => setTimeout(resolve, 200));  // coalesce a burst of byte counts
      } while (again);
    } catch (e) {
      conn.textContent = body.dataset.reconnecting;
    } finally {
      inFlight = false;
    }
  }

  const source = new EventSource("/events");
  source.addEventListener("snapshot", () => { conn.textContent = body.dataset.live; refresh(); });
  source.addEventListener("update", refresh);
  source.onerror = () => { conn.textContent = body.dataset.reconnecting; };
})();
