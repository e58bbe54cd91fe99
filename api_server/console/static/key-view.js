// One key, open beside the list: its value, version, TTL, what the user may do with it and which ACL
// governs it; copy, download and delete. Editing it is editor.js, its history history.js.

import { ApiError, api, keyPath } from "./api.js";
import { describeAccess, describeAcls, describeGoverning, describeReaders } from "./acls.js";
import { $, clock, downloadJson, formatTime, pretty } from "./dom.js";
import { renderRemote } from "./editor.js";
import { hideRollback } from "./history.js";
import { browse, listRemove, renderList } from "./key-list.js";
import { attempt, clearMessage, showError, showInfo } from "./messages.js";
import { setHash } from "./routing.js";
import { session } from "./session.js";
import { renderStagedNote } from "./staged.js";

// The open key: its last answer from GET, whether it is being edited, and what the draft started from.
export const open = { key: null, data: null, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null };
// What the server can tell (it may be older than this page): `include=access` on GET /keys/{key}.
const server = { access: true };

function setOpen(key, data) {
  Object.assign(open, { key, data, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null });
}

export function closeKey() {
  setOpen(null, null);
  $("key").hidden = true;
  $("create").hidden = true;
  $("detail-empty").hidden = false;
  hideRollback();
  if (!$("view-keys").hidden) setHash({ ns: browse.namespace });
}

function narrow() {
  return window.matchMedia("(max-width: 799px)").matches;
}

// GET /keys/{key} with what the page shows beside the value: the caller's access and the governing ACL
// (`include=access`), and for admins the key's own ACL. A server without `access` is asked the old way.
async function getKey(key) {
  const include = [session.admin ? "acls" : null, server.access ? "access" : null].filter(Boolean).join(",");
  try {
    return await api("GET", keyPath(key), { params: include ? { include } : undefined });
  } catch (err) {
    if (server.access && err instanceof ApiError && err.status === 400 && err.body.fields && err.body.fields.include) {
      server.access = false;
      return getKey(key);
    }
    throw err;
  }
}

export async function openKey(key, { keepMessage = false, reveal = false } = {}) {
  if (open.editing && open.key !== key && !window.confirm("Leave your unsaved draft?")) return;
  if (!keepMessage) clearMessage();
  let data;
  try {
    data = await getKey(key);
  } catch (err) {
    showError(err);
    return;
  }
  if (open.editing && open.key === key) return;  // Edit was pressed while this answer was on its way
  const other = open.key !== key;
  setOpen(key, data);
  $("create").hidden = true;
  $("detail-empty").hidden = true;
  $("key").hidden = false;
  if (other) {
    $("history-pane").hidden = true;
    hideRollback();
  }
  $("acl-form").hidden = true;
  renderKey();
  renderList();
  if (!$("view-keys").hidden) setHash({ key, ns: browse.namespace });
  if (reveal && narrow()) {
    // On a phone the detail follows the list: bring it to the top of the screen.
    $("key").scrollIntoView({ block: "start" });
    $("key-name").focus({ preventScroll: true });
  }
}

export function may(action) {
  const access = open.data && open.data.access;
  if (!access) return true;  // the server does not say: offer it, and let it decide
  return !!access[action];
}

export function renderKey() {
  const d = open.data;
  $("key-name").textContent = open.key;
  $("key-version").textContent = String(d.version);
  $("key-revision").textContent = String(d.revision);
  $("key-modified").textContent = formatTime(d.lastModified);
  $("key-modified").title = new Date(d.lastModified).toLocaleString();
  $("key-access").textContent = describeAccess(d);
  $("key-acls").textContent = describeAcls(d);
  $("key-governed").textContent = describeGoverning(d);
  $("key-readers").textContent = describeReaders(d);
  $("key-value").textContent = pretty(d.value);
  $("key-gone").hidden = !open.gone;
  $("key-gone").textContent = open.gone || "";
  $("editor").hidden = !open.editing;
  $("key-value").hidden = open.editing;
  const write = may("write");
  $("edit").hidden = !write;
  $("delete").hidden = !write;
  $("delete-stage").hidden = !write;
  $("edit").disabled = open.editing || !!open.gone;
  $("acl-edit").disabled = !!open.gone;
  $("delete").disabled = !!open.gone;
  $("delete-stage").disabled = open.editing || !!open.gone;
  $("copy").disabled = !!open.gone;
  $("delete-confirm").hidden = true;
  $("delete-cancel").hidden = true;
  renderStagedNote();
  renderRemote();
  tickTtl();
}

// Once a second: the open key's time to live.
export function tickTtl() {
  const d = open.data;
  if (!d || $("key").hidden) return;
  if (open.gone) {
    $("key-ttl").textContent = "—";
  } else if (!d.expiresAt) {
    $("key-ttl").textContent = "none (never expires)";
  } else {
    const left = Math.max(0, Math.round((Date.parse(d.expiresAt) - Date.now()) / 1000));
    $("key-ttl").textContent = left ? `${d.ttl} s, expires in ${clock(left)}` : `${d.ttl} s, expiring now`;
  }
}

async function deleteKey() {
  $("delete-cancel").hidden = true;
  const key = open.key;
  const done = await attempt(() => api("DELETE", keyPath(key), { ifMatch: open.data.version }));
  if (done === undefined) return;  // the error is shown (a 204 answers null)
  listRemove(key);
  closeKey();
  showInfo(`Deleted ${key}.`);
  $("new-key").focus();
}

async function copyValue() {
  const text = pretty(open.data.value);
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (an insecure origin): select the shown value for Ctrl/⌘+C.
    const range = document.createRange();
    range.selectNodeContents($("key-value"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    showInfo("The value is selected: press Ctrl/⌘+C to copy it.");
    return;
  }
  showInfo(`Copied the value of ${open.key} (version ${open.data.version}).`);
}

export function wireKeyView() {
  $("copy").addEventListener("click", copyValue);
  $("download-value").addEventListener("click", () => downloadJson(open.key, open.data.value));
  $("delete").addEventListener("click", () => {
    $("delete-confirm").hidden = false;
    $("delete-cancel").hidden = false;
    $("delete-confirm").focus();
  });
  $("delete-cancel").addEventListener("click", () => {
    $("delete-confirm").hidden = true;
    $("delete-cancel").hidden = true;
    $("delete").focus();
  });
  $("delete-confirm").addEventListener("click", deleteKey);
}
