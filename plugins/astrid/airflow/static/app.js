// AstrID page: reads /astrid/status and /astrid/runs, triggers runs with POST /astrid/trigger, and
// drills down run → observations → detections (GET /astrid/observations, /astrid/detections, stamps).
// Same origin as the Airflow UI: requests carry the UI's session cookie (`_token`, HttpOnly, so
// this script never sees it); a Bearer token is not needed. URLs are relative to /astrid/ui so the
// page works under any mount point.
"use strict";

const REFRESH_MS = 15000;
const POLL_MS = 3000;
const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function stateBadge(state) {
  return el("span", { class: `state ${state || "none"}`, "data-state": state || "none" }, state || "—");
}

function pct(rate) {
  return rate === null || rate === undefined ? "—" : `${Math.round(rate * 100)} %`;
}

async function getJSON(url, options = {}) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json", ...(options.headers || {}) },
    ...options,
  });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return { response, body };
}

function showAuthError(show) { $("#auth-error").hidden = !show; }

function showLoadError(message) {
  const box = $("#load-error");
  box.hidden = !message;
  box.textContent = message || "";
}

function renderDags(dags) {
  const body = $("#status-dags tbody");
  body.replaceChildren();
  for (const dag of dags) {
    const last = dag.last_run || {};
    const row = el("tr", { dataset: { dagId: dag.dag_id } },
      el("td", {}, el("strong", {}, dag.kind || dag.dag_id), el("div", { class: "muted" }, dag.dag_id)),
      el("td", { class: "paused" }, !dag.exists ? "not in Airflow" : dag.paused ? stateBadge("paused") : "no"),
      el("td", { class: "last-run" }, last.run_id || "—"),
      el("td", { class: "last-state" }, last.run_id ? stateBadge(last.state) : "—"),
      el("td", {}, when(last.end_date)),
      el("td", {}, when(dag.next_run)),
      el("td", { class: "num runs-today" }, String(dag.runs_today)),
      el("td", { class: "num success-rate" }, pct(dag.success_rate_24h)),
      el("td", { class: "num detections" }, dag.last_detection_count ?? "—"),
    );
    body.append(row);
  }
}

function renderCatalog(catalog) {
  const body = $("#catalog tbody");
  body.replaceChildren();
  for (const [name, count] of Object.entries(catalog.status_counts)) {
    body.append(el("tr", { dataset: { status: name } }, el("td", {}, name), el("td", { class: "num" }, String(count))));
  }
  $("#stuck").textContent = catalog.stuck_claims
    ? `${catalog.stuck_claims} stuck claim(s); oldest lease expired ${when(catalog.oldest_stuck_lease)}`
    : "No stuck claims.";
}

function renderProblems(problems) {
  const list = $("#problems");
  list.replaceChildren(...problems.map((p) => el("li", {}, p)));
  list.hidden = problems.length === 0;
}

function renderRuns(runs) {
  const body = $("#runs tbody");
  body.replaceChildren();
  if (!runs.length) {
    body.append(el("tr", {}, el("td", { colspan: "10", class: "muted" }, "No inference runs recorded in the last 24 h.")));
    return;
  }
  for (const r of runs) {
    body.append(el("tr", {},
      el("td", {}, r.kind || r.dag_id),
      el("td", { class: "run-id" }, el("a", { href: runHref(`${r.dag_id}:${r.run_id}`) }, r.run_id)),
      el("td", {}, stateBadge(r.status)),
      el("td", {}, r.model_version || "—"), el("td", {}, when(r.started_at)),
      el("td", { class: "num" }, String(r.processed ?? "—")), el("td", { class: "num" }, String(r.failed ?? "—")),
      el("td", { class: "num" }, String(r.rejected ?? "—")), el("td", { class: "num" }, String(r.detections ?? "—")),
      el("td", { class: "num" }, r.processing_seconds == null ? "—" : r.processing_seconds.toFixed(1)),
    ));
  }
}

async function refresh() {
  try {
    const [status, runs] = await Promise.all([getJSON("status"), getJSON("runs?hours=24")]);
    if (status.response.status === 401 || status.response.status === 403) {
      showAuthError(true);
      return;
    }
    showAuthError(false);
    if (!status.response.ok) {
      showLoadError(`Status unavailable: HTTP ${status.response.status} ${status.body?.detail ?? ""}`);
      return;
    }
    showLoadError("");
    renderDags(status.body.dags);
    renderCatalog(status.body.catalog);
    renderProblems(status.body.problems);
    if (status.body.links?.grafana) $("#grafana-link").href = status.body.links.grafana;
    if (runs.response.ok) renderRuns(runs.body.runs);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    showLoadError(`Status unavailable: ${err}`);
  }
}

function formBody(form) {
  const data = new FormData(form);
  const body = { run_type: data.get("run_type") };
  const max = data.get("max_observations");
  if (max !== "") body.max_observations = Number(max);
  const model = String(data.get("model_version") || "").trim();
  if (model) body.model_version = model;
  const threshold = data.get("confidence_threshold");
  if (threshold !== "") body.confidence_threshold = Number(threshold);
  return body;
}

function describeError(body) {
  const detail = body?.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("\n");
  }
  return typeof detail === "string" ? detail : JSON.stringify(body);
}

async function pollRun(dagId, runId, stateNode) {
  // Airflow's own REST API accepts the same session cookie.
  const url = `../api/v2/dags/${encodeURIComponent(dagId)}/dagRuns/${encodeURIComponent(runId)}`;
  for (;;) {
    const { response, body } = await getJSON(url);
    if (response.ok) {
      stateNode.replaceChildren(stateBadge(body.state));
      stateNode.dataset.state = body.state;
      if (body.state === "success" || body.state === "failed") {
        refresh();
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function trigger(event) {
  event.preventDefault();
  const form = event.target;
  const button = $("#trigger-button");
  const result = $("#trigger-result");
  button.disabled = true;
  result.hidden = false;
  result.className = "result";
  result.replaceChildren("Triggering…");
  try {
    const { response, body } = await getJSON("trigger", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(formBody(form)),
    });
    if (!response.ok) {
      result.className = "result error";
      result.replaceChildren(el("strong", {}, `Refused (HTTP ${response.status})`), el("pre", { id: "trigger-error" }, describeError(body)));
      return;
    }
    const stateNode = el("span", { id: "trigger-state", "data-state": body.state || "queued" }, stateBadge(body.state));
    result.replaceChildren(
      el("div", {}, "Run ", el("code", { id: "trigger-run-id" }, body.run_id), ` of ${body.dag_id}: `, stateNode),
      el("div", { class: "muted" }, `conf ${JSON.stringify(body.conf)}`),
    );
    if (body.paused) {
      result.append(el("div", { class: "banner warn" }, `${body.dag_id} is paused: the run stays queued until it is unpaused.`));
    }
    refresh();
    pollRun(body.dag_id, body.run_id, stateNode);
  } catch (err) {
    result.className = "result error";
    result.replaceChildren(`Trigger failed: ${err}`);
  } finally {
    button.disabled = false;
  }
}

function grafanaHint() {
  // Embedded by the Airflow UI in a sandboxed iframe without allow-popups: target=_blank links
  // are blocked there, so point at the nav entry that opens Grafana from the top window.
  try {
    const frame = window.frameElement;
    if (frame && frame.sandbox && frame.sandbox.length && !frame.sandbox.contains("allow-popups")) {
      $("#grafana-hint").hidden = false;
    }
  } catch { /* cross-origin parent: nothing to check */ }
}

// ------------------------------------------------------------------------------- drill-down
// Views are chosen by the URL's hash (#run=<dag id>:<run id>, #obs=<id>&run=...&det=<id>), so a
// view has a link of its own (the Airflow UI mirrors the frame's hash in its own URL). Every
// request and image URL is relative to this page: the page works wherever Airflow mounts it.

const GALLERY_PAGE = 500;
const SORTS = {
  "score-desc": ["score ↓", (a, b) => b.score - a.score || a.id - b.id],
  "score-asc": ["score ↑", (a, b) => a.score - b.score || a.id - b.id],
  "snr-desc": ["SNR ↓", (a, b) => (b.snr ?? -Infinity) - (a.snr ?? -Infinity) || a.id - b.id],
  "mag-asc": ["magnitude ↑ (bright first)", (a, b) => (a.mag ?? Infinity) - (b.mag ?? Infinity) || a.id - b.id],
};
const galleries = {};

function runHref(runKey) { return `#run=${encodeURIComponent(runKey)}`; }
function obsHref(id, runKey) { return `#obs=${id}${runKey ? `&run=${encodeURIComponent(runKey)}` : ""}`; }
function hashParams() { return new URLSearchParams(location.hash.replace(/^#/, "")); }

function num(value, digits) { return value === null || value === undefined ? "—" : Number(value).toFixed(digits); }

function sexagesimal(deg, hours) {
  const sign = deg < 0 ? "-" : hours ? "" : "+";
  let v = Math.abs(deg) / (hours ? 15 : 1);
  const a = Math.floor(v); v = (v - a) * 60;
  const b = Math.floor(v); const c = (v - b) * 60;
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${sign}${pad(a, 2)}:${pad(b, 2)}:${c.toFixed(hours ? 2 : 1).padStart(hours ? 5 : 4, "0")}`;
}

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  document.body.dataset.view = name;
}

function detectionCard(d) {
  const facts = [
    ["score", num(d.score, 3)],
    ["RA, Dec", d.ra === null ? "no WCS" : `${num(d.ra, 5)}°, ${num(d.dec, 5)}°`],
    ["", d.ra === null ? "" : `${sexagesimal(d.ra, true)} ${sexagesimal(d.dec, false)}`],
    ["x, y", `${num(d.x, 1)}, ${num(d.y, 1)} px`],
    ["flux", d.flux_err === null ? num(d.flux, 1) : `${num(d.flux, 1)} ± ${num(d.flux_err, 1)}`],
    ["SNR", num(d.snr, 1)],
    ["mag (AB)", d.mag === null ? "—" : `${num(d.mag, 2)} ± ${num(d.mag_err, 2)}`],
  ];
  const stamp = d.stamp_png
    ? el("img", { class: "stamp", src: d.stamp_png, alt: `stamps of detection ${d.id}`, loading: "lazy", width: "252", height: "63" })
    : el("div", { class: "stamp none muted" }, "no stamps written (beyond the per-observation limit, or off)");
  // no id attribute: the run's gallery and an observation's may both hold this detection's card
  const card = el("article", { class: "card", dataset: { id: String(d.id), score: String(d.score) } },
    stamp,
    el("div", { class: "stamp-labels muted" }, el("span", {}, "science"), el("span", {}, "reference"), el("span", {}, "difference"), el("span", {}, "probability")),
    el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("p", { class: "card-links" },
      el("a", { href: obsHref(d.observation_id, d.run_id), class: "obs-link" }, d.observation),
      d.stamp_fits ? el("a", { href: d.stamp_fits, class: "fits-link" }, "FITS ↓") : ""),
  );
  card.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    highlight(d.id, false);
  });
  return card;
}

function controls(galleryId) {
  const box = document.querySelector(`.gallery-controls[data-gallery="${galleryId}"]`);
  if (box.dataset.ready) return;
  box.dataset.ready = "true";
  const sort = el("select", { class: "sort", "aria-label": "sort" },
    ...Object.entries(SORTS).map(([key, [label]]) => el("option", { value: key }, label)));
  const min = el("input", { class: "min-score", type: "range", min: "0", max: "1", step: "0.01", value: "0", "aria-label": "minimum score" });
  const minText = el("output", { class: "min-score-value" }, "0.00");
  const count = el("span", { class: "count muted" });
  box.append(el("label", {}, "Sort ", sort), el("label", {}, "Score ≥ ", min, " ", minText), count);
  const update = () => { minText.textContent = Number(min.value).toFixed(2); renderGallery(galleryId); };
  sort.addEventListener("change", update);
  min.addEventListener("input", update);
}

function renderGallery(galleryId) {
  const box = document.querySelector(`.gallery-controls[data-gallery="${galleryId}"]`);
  const [, compare] = SORTS[box.querySelector(".sort").value];
  const minimum = Number(box.querySelector(".min-score").value);
  const all = galleries[galleryId] || [];
  const shown = all.filter((d) => d.score >= minimum).sort(compare);
  box.querySelector(".count").textContent = `${shown.length} of ${all.length} shown`;
  const gallery = document.getElementById(galleryId);
  gallery.replaceChildren(...shown.map(detectionCard));
  if (!shown.length) gallery.append(el("p", { class: "muted" }, all.length ? "None above this score." : "No detections."));
  for (const circle of document.querySelectorAll("#frame-overlay circle")) {
    circle.classList.toggle("filtered", Number(circle.dataset.score) < minimum);
  }
}

function setGallery(galleryId, detections) {
  controls(galleryId);
  galleries[galleryId] = detections;
  renderGallery(galleryId);
}

async function loadOrFail(url) {
  const { response, body } = await getJSON(url);
  if (response.status === 401 || response.status === 403) { showAuthError(true); throw new Error("not signed in"); }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${describeError(body)}`);
  return body;
}

async function showRun(runKey) {
  showView("run");
  $("#run-title").textContent = runKey;
  const query = new URLSearchParams({ run_id: runKey, limit: "10000" });
  $("#run-csv").href = `detections?${query}&format=csv`;
  $("#run-votable").href = `detections?${query}&format=votable`;
  const [observations, found] = await Promise.all([
    loadOrFail(`observations?run_id=${encodeURIComponent(runKey)}`),
    loadOrFail(`detections?run_id=${encodeURIComponent(runKey)}&limit=${GALLERY_PAGE}`),
  ]);
  const body = $("#run-observations tbody");
  body.replaceChildren(...observations.map((o) => el("tr", { dataset: { observationId: String(o.id) } },
    el("td", {}, el("a", { href: obsHref(o.id, runKey) }, o.name)),
    el("td", { class: "num" }, num(o.mjd, 5)), el("td", {}, o.filter ?? "—"), el("td", {}, o.model_version),
    el("td", { class: "num" }, String(o.detections)), el("td", { class: "num" }, num(o.best_score, 3)))));
  if (!observations.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "This run processed no observation (or is not in the catalog).")));
  setGallery("run-gallery", found.detections);
  if (found.next_offset !== null) {
    $("#run-gallery").append(el("p", { class: "muted" }, `The ${GALLERY_PAGE} best shown; the exports have them all.`));
  }
  document.body.dataset.loaded = "true";
}

function drawFrame(obs) {
  const img = $("#frame-img");
  const svg = $("#frame-overlay");
  const f = obs.frame_factor;
  const w = Math.ceil(obs.width / f);
  const h = Math.ceil(obs.height / f);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren(...obs.detections.map((d) => {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", String((d.x + 0.5) / f));
    c.setAttribute("cy", String(h - (d.y + 0.5) / f));  // FITS rows go up, the image's down
    c.setAttribute("r", String(Math.max(4, 12 / f)));
    c.dataset.id = String(d.id);
    c.dataset.score = String(d.score);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `detection ${d.id}: score ${num(d.score, 3)}, SNR ${num(d.snr, 1)}`;
    c.append(title);
    c.addEventListener("click", () => highlight(d.id, true));
    return c;
  }));
  img.src = obs.frame_png;
}

function highlight(id, scroll) {
  for (const node of document.querySelectorAll(".card.selected, #frame-overlay circle.selected")) node.classList.remove("selected");
  const card = document.querySelector(`.view:not([hidden]) .card[data-id="${id}"]`);
  const circle = document.querySelector(`#frame-overlay circle[data-id="${id}"]`);
  if (card) { card.classList.add("selected"); if (scroll) card.scrollIntoView({ block: "center" }); }
  if (circle) circle.classList.add("selected");
}

async function showObservation(id, runKey) {
  showView("observation");
  const obs = await loadOrFail(`observations/${encodeURIComponent(id)}`);
  $("#obs-title").textContent = obs.name;
  $("#obs-run-link").href = runKey ? runHref(runKey) : "#";
  $("#obs-run-link").textContent = runKey ? `run ${runKey}` : "runs";
  $("#obs-facts").textContent = `MJD ${num(obs.mjd, 5)} · filter ${obs.filter ?? "—"} · ${obs.width}×${obs.height} px · ` +
    `${obs.detections.length} detection(s) · status ${obs.status}`;
  const detections = runKey ? obs.detections.filter((d) => d.run_id === runKey) : obs.detections;
  $(".frame-section").hidden = !obs.frame_png;
  if (obs.frame_png) drawFrame({ ...obs, detections });
  setGallery("obs-gallery", detections);
  const wanted = hashParams().get("det");
  if (wanted) highlight(wanted, true);
  document.body.dataset.loaded = "true";
}

async function route() {
  const params = hashParams();
  delete document.body.dataset.loaded;
  showLoadError("");
  try {
    if (params.get("obs")) await showObservation(params.get("obs"), params.get("run"));
    else if (params.get("run")) await showRun(params.get("run"));
    else { showView("status"); await refresh(); }
  } catch (err) {
    showLoadError(String(err.message || err));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#refresh").addEventListener("click", refresh);
  $("#trigger-form").addEventListener("submit", trigger);
  grafanaHint();
  window.addEventListener("hashchange", route);
  route();
  setInterval(() => { if (document.body.dataset.view === "status") refresh(); }, REFRESH_MS);
});
