// AstrID page: reads /astrid/status and /astrid/runs, triggers runs with POST /astrid/trigger.
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
      el("td", {}, r.kind || r.dag_id), el("td", { class: "run-id" }, r.run_id), el("td", {}, stateBadge(r.status)),
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

document.addEventListener("DOMContentLoaded", () => {
  $("#refresh").addEventListener("click", refresh);
  $("#trigger-form").addEventListener("submit", trigger);
  grafanaHint();
  refresh();
  setInterval(refresh, REFRESH_MS);
});
