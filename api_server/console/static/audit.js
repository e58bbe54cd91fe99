// The audit log (admins): records found by key, actor, action, outcome and time, page by page, and the
// server's verdict on its hash chain.

import { api } from "./api.js";
import { $, cell, formatTime } from "./dom.js";
import { attempt } from "./messages.js";

const AUDIT_PAGE = 50;

const audit = { cursor: null, query: null };

async function searchAudit(event, more = false) {
  if (event) event.preventDefault();
  if (!more) {
    const since = $("audit-since").value;
    audit.query = {
      key: $("audit-key").value.trim(),
      actor: $("audit-actor").value.trim(),
      action: $("audit-action").value,
      outcome: $("audit-outcome").value,
      since: since ? new Date(since + "Z").toISOString() : "",  // the field is UTC, as the table
    };
    audit.cursor = null;
    $("audit-rows").replaceChildren();
    $("audit-empty").hidden = true;
  }
  const data = await attempt(() =>
    api("GET", "/audit", { params: { ...audit.query, limit: AUDIT_PAGE, cursor: audit.cursor } }));
  if (!data) return;
  const labels = ["At", "Actor", "Action", "Key", "Version", "Outcome", "Request id"];
  for (const r of data.records) {
    const row = document.createElement("tr");
    // A record without its own seal says what vouches for it (GET /audit `seal`; verify proves it).
    const seal = { adopted: " (adopted, no seal)", none: " (NO SEAL: nothing vouches for it)" }[r.seal] || "";
    [formatTime(r.at), r.actor || "", r.action, r.key || "", r.version === undefined || r.version === null ? "" : String(r.version),
      r.outcome + seal, r.requestId || ""].forEach((text, i) => {
      row.append(cell(labels[i], text, i === 6 ? "request-id" : ""));
    });
    if (r.outcome !== "ok") row.classList.add(`outcome-${r.outcome}`);
    $("audit-rows").append(row);
  }
  audit.cursor = data.next || null;
  $("audit-more").hidden = !audit.cursor;
  $("audit-empty").hidden = $("audit-rows").children.length > 0;
}

async function verifyChain() {
  const box = $("verify-result");
  box.hidden = false;
  box.className = "verify";
  box.textContent = "Verifying the audit chain…";
  const report = await attempt(() => api("GET", "/audit/verify"));
  if (!report) {
    box.hidden = true;
    return;
  }
  box.className = `verify ${report.ok ? "ok" : "broken"}`;
  box.textContent = report.summary;
}

// Signed out: no record or search of this user's stays on the page.
export function forgetAudit() {
  $("audit-rows").replaceChildren();
  $("audit-more").hidden = true;
  $("audit-empty").hidden = true;
  $("verify-result").hidden = true;
  for (const id of ["audit-key", "audit-actor", "audit-since", "audit-action", "audit-outcome"]) $(id).value = "";
}

export function wireAudit() {
  $("audit-form").addEventListener("submit", (e) => searchAudit(e));
  $("audit-more").addEventListener("click", () => searchAudit(null, true));
  $("audit-verify").addEventListener("click", verifyChain);
}
