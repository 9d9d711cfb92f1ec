// The terminal's mobile page: tus uploads (resumed after a cut), strip reading, live results, cases, signing sessions.
// No inline script anywhere (strict CSP); the words come from the page's data-t-* attributes.
"use strict";
(function () {
  const body = document.body;
  const t = (key) => body.getAttribute("data-t-" + key) || key;
  const CHUNK = 4 * 1024 * 1024;
  const TUS = { "Tus-Resumable": "1.0.0" };
  const mine = [];

  const b64 = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };

  function row(list, title) {
    const li = el("li");
    li.append(el("span", "name", title));
    const state = el("span", "state");
    li.append(state);
    list.prepend(li);
    return { li, state };
  }

  async function offsetOf(url) {
    const r = await fetch(url, { method: "HEAD", headers: TUS });
    return r.ok ? { offset: Number(r.headers.get("Upload-Offset")), evidence: r.headers.get("Egw-Evidence-Id") } : null;
  }

  async function tusUpload(file, show) {
    const meta = "filename " + b64(file.name || "photo.jpg") + ",filetype " + b64(file.type || "application/octet-stream");
    const created = await fetch("/files", { method: "POST", headers: { ...TUS, "Upload-Length": String(file.size), "Upload-Metadata": meta } });
    if (created.status !== 201) throw new Error(await created.text());
    const url = new URL(created.headers.get("Location"), location.href).pathname;
    let offset = 0, evidence = null, failures = 0;
    while (offset < file.size || (file.size === 0 && !evidence)) {
      try {
        const r = await fetch(url, { method: "PATCH", headers: { ...TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset) },
                                     body: file.slice(offset, offset + CHUNK) });
        if (r.status !== 204) throw new Error(await r.text());
        offset = Number(r.headers.get("Upload-Offset"));
        evidence = r.headers.get("Egw-Evidence-Id");
        failures = 0;
        show(offset);
      } catch (err) {
        if (++failures > 5) throw err;
        show(offset, t("resuming"));
        await new Promise((ok) => setTimeout(ok, 1000 * failures));
        const known = await offsetOf(url).catch(() => null);
        if (known) { offset = known.offset; evidence = known.evidence; }
      }
      if (file.size === 0) break;
    }
    return evidence || (await offsetOf(url)).evidence;
  }

  async function readStrip(file, line) {
    line.state.textContent = t("reading");
    const r = await fetch("/api/v1/strips/read", { method: "POST", headers: { "Content-Type": file.type || "image/jpeg" }, body: file });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error);
    mine.push(answer.photo_evidence_id);
    if (answer.evidence_id) mine.push(answer.evidence_id);
    line.li.className = answer.ok ? "ok" : "bad";
    line.state.textContent = answer.ok ? answer.reading.format + " · " + answer.reading.judgement : t("no-reading") + ": " + answer.error;
  }

  async function send(file) {
    const line = row(document.getElementById("uploads"), file.name || "photo");
    try {
      if (document.getElementById("strip").checked) return await readStrip(file, line);
      const bar = el("progress"); bar.max = file.size || 1; line.li.append(bar);
      const evidence = await tusUpload(file, (done, note) => { bar.value = done; line.state.textContent = note || t("uploading"); });
      mine.push(evidence);
      line.li.className = "ok";
      line.state.textContent = t("stored");
      line.li.append(el("span", "id", evidence));
      line.li.setAttribute("data-evidence-id", evidence);
    } catch (err) {
      line.li.className = "bad";
      line.state.textContent = t("failed") + " (" + err.message + ")";
    }
  }

  function showResults(results) {
    const list = document.getElementById("results");
    list.replaceChildren();
    if (!results.length) list.append(el("li", "", t("empty")));
    for (const r of results) {
      const li = el("li", r.judgement === "positive" || r.judgement === "不合格" ? "bad" : "ok",
                    [r.sample_id, r.item_name || r.item_code, r.value + (r.unit ? " " + r.unit : "")].filter(Boolean).join(" · "));
      li.append(el("span", "state", r.judgement || ""));
      list.append(li);
    }
  }

  function follow() {
    const conn = document.getElementById("conn");
    const events = new EventSource("/api/v1/results/events");
    events.addEventListener("results", (e) => showResults(JSON.parse(e.data)));
    events.onopen = () => { conn.textContent = t("live"); };
    events.onerror = () => { conn.textContent = t("offline"); };
  }

  async function showCase() {
    const no = document.getElementById("case-no").value.trim();
    const list = document.getElementById("case");
    if (!no) return;
    const r = await fetch("/api/v1/cases/" + encodeURIComponent(no));
    const answer = await r.json();
    list.replaceChildren();
    if (!r.ok) { list.append(el("li", "bad", answer.error)); return; }
    if (!answer.items.length) list.append(el("li", "", t("empty")));
    for (const item of answer.items) {
      const li = el("li", "", item.evidence_id);
      li.append(el("span", "state", item.state));
      list.append(li);
    }
  }

  async function addToCase() {
    const no = document.getElementById("case-no").value.trim();
    if (!no || !mine.length) return;
    const r = await fetch("/api/v1/cases/" + encodeURIComponent(no) + "/items",
                          { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ evidence_ids: mine }) });
    if (r.ok) await showCase();
  }

  // ---- signing: the party signs on the station's pad; the sealed record's one-time link comes back as a QR code ----
  const $ = (id) => document.getElementById(id);
  const english = document.documentElement.lang === "en";  // the devices' prompts are English; the state line says it in Chinese

  function chosenTemplate() {
    const kind = $("sign-template").value;
    for (const set of document.querySelectorAll("fieldset[data-template]")) {
      const on = set.dataset.template === kind;
      set.hidden = !on; set.disabled = !on;
    }
    return document.querySelector('fieldset[data-template="' + kind + '"]');
  }

  function signRequest() {
    const set = chosenTemplate();
    const form = {}, party = {};
    for (const input of set.querySelectorAll("[data-key]")) if (input.value.trim()) form[input.dataset.key] = input.value.trim();
    const officer = set.querySelector("[data-officer-name]");
    if (officer) form.officers = [{ name: officer.value.trim(), id: set.querySelector("[data-officer-id]").value }];
    for (const input of set.querySelectorAll("[data-party]")) if (input.value.trim()) party[input.dataset.party] = input.value.trim();
    const request = { template: set.dataset.template, form, party, cites: mine.slice() };
    const caseNo = $("case-no").value.trim();
    if (caseNo) request.case_no = caseNo;
    return request;
  }

  function showSigning(session) {
    const state = $("sign-state");
    state.className = session.state === "failed" ? "bad" : session.state === "delivered" ? "ok" : "wait";
    state.textContent = session.state === "failed" ? t("state-failed") + ": " + session.error.error + " — " + session.error.hint
                                                   : t("state-" + session.state) + (session.prompt && english ? " · " + session.prompt : "");
    if (session.state !== "delivered") return;
    const svg = new DOMParser().parseFromString(session.qr_svg, "image/svg+xml").documentElement;
    $("sign-qr").replaceChildren(document.importNode(svg, true));
    $("sign-result").replaceChildren(el("span", "", session.evidence_id), el("br"), el("span", "", t("scan") + " · " + session.link_expires_at));
    $("sign-result").dataset.evidenceId = session.evidence_id;
  }

  async function startSigning(event) {
    event.preventDefault();
    const button = $("sign-start");
    button.disabled = true;
    $("sign-qr").replaceChildren(); $("sign-result").replaceChildren();
    try {
      const r = await fetch("/api/v1/signing-sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(signRequest()) });
      const answer = await r.json();
      if (r.status !== 202) { showSigning({ state: "failed", error: answer }); button.disabled = false; return; }
      showSigning(answer);
      const events = new EventSource("/api/v1/signing-sessions/" + encodeURIComponent(answer.session_id) + "/events");
      events.addEventListener("session", (e) => {
        const session = JSON.parse(e.data);
        showSigning(session);
        if (session.finished) { events.close(); button.disabled = false; }
      });
    } catch (err) {
      showSigning({ state: "failed", error: { error: err.message, hint: t("offline") } });
      button.disabled = false;
    }
  }

  $("sign-template").addEventListener("change", chosenTemplate);
  $("sign-form").addEventListener("submit", startSigning);
  document.getElementById("file").addEventListener("change", (e) => { for (const f of e.target.files) send(f); e.target.value = ""; });
  document.getElementById("case-show").addEventListener("click", showCase);
  document.getElementById("case-add").addEventListener("click", addToCase);
  follow();
})();
