// The open key's history: its versions page by page, a diff of any two, and rolling back to one (asked
// first, with the diff of what would change).

import { ApiError, api, keyPath } from "./api.js";
import { renderDiff } from "./diff.js";
import { $, cell, downloadJson, formatTime, pretty } from "./dom.js";
import { may, open, openKey } from "./key-view.js";
import { attempt, clearMessage, showError, showInfo } from "./messages.js";

const HISTORY_PAGE = 20;
const LONG_VALUE_CHARS = 400;  // a longer value shows shortened in the history, with "Show all" and "Download"

const history = { cursor: null, versions: new Map(), rollback: null };

async function showHistory(more = false) {
  if (!more) {
    history.cursor = null;
    history.versions = new Map();
    $("history-rows").replaceChildren();
    $("diff-pane").hidden = true;
    hideRollback();
  }
  const data = await attempt(() =>
    api("GET", keyPath(open.key) + "/history", { params: { limit: HISTORY_PAGE, cursor: history.cursor } }));
  if (!data) return;
  $("history-pane").hidden = false;
  for (const v of data.versions) {
    history.versions.set(v.version, v);
    $("history-rows").append(historyRow(v));
  }
  history.cursor = data.next || null;
  $("history-more").hidden = !history.cursor;
  fillDiffChoices();
}

function historyRow(v) {
  const row = document.createElement("tr");
  row.dataset.version = String(v.version);
  row.append(cell("Version", String(v.version)), cell("Event", v.event),
    cell("Value", v.event === "update" ? valueView(v.value, `v${v.version}`, `${open.key}.v${v.version}`) : "—", "json"),
    cell("By", v.actor || ""), cell("At", formatTime(v.at)));
  const action = cell("", "", "action");
  if (v.event === "update" && open.data && may("write") && (open.gone || v.version !== open.data.version)) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `Roll back to v${v.version}`;
    button.addEventListener("click", () => askRollback(v.version));
    action.append(button);
  }
  row.append(action);
  return row;
}

// A value as text: whole when short; a long one shortened, with its size, "Show all" (scrolling inside a box)
// and "Download" (as `<stem>.json`), so one big version cannot stretch the table.
function valueView(value, label, stem) {
  const text = JSON.stringify(value);
  if (text.length <= LONG_VALUE_CHARS) return [document.createTextNode(text)];
  const short = document.createElement("span");
  short.textContent = text.slice(0, LONG_VALUE_CHARS) + "…";
  const size = document.createElement("span");
  size.className = "muted size";
  size.textContent = ` (${text.length.toLocaleString("en-US")} characters)`;
  const full = document.createElement("pre");
  full.className = "value";
  full.hidden = true;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "small";
  toggle.textContent = "Show all";
  toggle.setAttribute("aria-label", `Show all of ${label}`);
  toggle.addEventListener("click", () => {
    const showing = full.hidden;
    if (showing && !full.textContent) full.textContent = pretty(value);
    full.hidden = !showing;
    short.hidden = showing;
    toggle.textContent = showing ? "Show less" : "Show all";
    toggle.setAttribute("aria-label", `${showing ? "Show less" : "Show all"} of ${label}`);
  });
  const save = document.createElement("button");
  save.type = "button";
  save.className = "small";
  save.textContent = "Download";
  save.setAttribute("aria-label", `Download ${label}`);
  save.addEventListener("click", () => downloadJson(stem, value));
  const buttons = document.createElement("span");
  buttons.className = "row inline";
  buttons.append(toggle, save);
  return [short, size, full, buttons];
}

function fillDiffChoices() {
  const versions = [...history.versions.values()].filter((v) => v.event === "update");
  for (const [id, pick] of [["diff-from", 1], ["diff-to", 0]]) {
    const select = $(id);
    const was = select.value;
    select.replaceChildren(...versions.map((v) => {
      const option = document.createElement("option");
      option.value = String(v.version);
      option.textContent = `${v.version}${open.data && v.version === open.data.version && !open.gone ? " (current)" : ""}`;
      return option;
    }));
    if (was && versions.some((v) => String(v.version) === was)) select.value = was;
    else if (versions.length) select.value = String(versions[Math.min(pick, versions.length - 1)].version);
  }
  $("diff-form").hidden = versions.length < 2;
}

function compareVersions(event) {
  event.preventDefault();
  const from = history.versions.get(Number($("diff-from").value));
  const to = history.versions.get(Number($("diff-to").value));
  if (!from || !to) return;
  $("diff-title").textContent = `Version ${from.version} → version ${to.version}`;
  renderDiff($("diff-view"), pretty(from.value), pretty(to.value));
  $("diff-pane").hidden = false;
}

// --- rollback -------------------------------------------------------------------------------------

// Roll back asks first, showing what would change: the current value against the chosen version's.
function askRollback(version) {
  const chosen = history.versions.get(version);
  if (!chosen) return;
  history.rollback = version;
  const current = open.gone ? "" : pretty(open.data.value);
  const now = open.gone ? `Version ${open.data.version} (${open.gone.replace(/\.$/, "")})` : `Version ${open.data.version} (current)`;
  $("rollback-text").textContent = `Roll back to version ${version}? ${now} → version ${version}:`;
  renderDiff($("rollback-diff"), current, pretty(chosen.value));
  $("rollback-confirm").hidden = false;
  $("rollback-now").focus();
}

export function hideRollback() {
  history.rollback = null;
  $("rollback-confirm").hidden = true;
}

async function rollback(version) {
  if (open.editing && !window.confirm("Roll back and discard your unsaved draft?")) return;
  clearMessage();
  hideRollback();
  const ifMatch = open.gone ? undefined : open.data.version;
  try {
    const written = await api("POST", keyPath(open.key) + "/rollback", { body: { version }, ifMatch });
    open.editing = false;
    await openKey(open.key, { keepMessage: true });
    await showHistory();
    showInfo(`Rolled ${open.key} back to the value of version ${version} (now version ${written.version}).`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 412) {
      showError(new Error(`${err.message}. The key changed meanwhile: look at the history again before rolling back.`));
      await openKey(open.key, { keepMessage: true });
      return;
    }
    showError(err);
  }
}

export function wireHistory() {
  $("history").addEventListener("click", () => showHistory());
  $("history-more").addEventListener("click", () => showHistory(true));
  $("diff-form").addEventListener("submit", compareVersions);
  $("rollback-now").addEventListener("click", () => { if (history.rollback !== null) rollback(history.rollback); });
  $("rollback-cancel").addEventListener("click", hideRollback);
}
