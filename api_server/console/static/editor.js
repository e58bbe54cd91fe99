// Writing keys: the JSON editor of the open key (checked as you type, saved against the version it was made
// from, with the conflict and remote-change boxes when someone else wrote meanwhile) and the new-key form.

import { ApiError, api, keyPath, readKey } from "./api.js";
import { readAclFields } from "./acls.js";
import { $, pretty } from "./dom.js";
import { browse, listAdd } from "./key-list.js";
import { closeKey, open, openKey, renderKey } from "./key-view.js";
import { attempt, clearMessage, showError, showInfo } from "./messages.js";
import { session } from "./session.js";

// The JSON editor checks as you type: the field is marked, the reason shown, and saving waits for valid JSON.
const JSON_FIELDS = {
  draft: { check: "draft-check", buttons: ["save", "edit-stage"] },
  "create-value": { check: "create-check", buttons: ["create-submit", "create-stage"] },
};

function checkJson(id) {
  const field = JSON_FIELDS[id];
  const text = $(id).value;
  const parsed = text.trim() ? parseDraft(text) : { ok: false, error: new Error("Empty: type a JSON value.") };
  const note = $(field.check);
  note.textContent = parsed.ok ? "Valid JSON" : parsed.error.message.replace(/^The value is not valid JSON/, "Not valid JSON");
  note.className = `json-check ${parsed.ok ? "ok" : "bad"}`;
  $(id).setAttribute("aria-invalid", String(!parsed.ok));
  for (const button of field.buttons) $(button).disabled = !parsed.ok;
  return parsed.ok;
}

export function parseDraft(text) {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, error: new Error(`The value is not valid JSON: ${err.message}. Strings need quotes: "text".`) };
  }
}

function startEdit() {
  open.editing = true;
  open.baseVersion = open.data.version;
  open.remote = null;
  $("draft").value = pretty(open.data.value);
  $("conflict").hidden = true;
  renderKey();
  checkJson("draft");
  $("draft").focus();
}

// The draft put away (cancelled, staged, or given up for the server's value): the key as the server has it.
export async function leaveEdit() {
  open.editing = false;
  open.remote = null;
  $("conflict").hidden = true;
  $("remote-change").hidden = true;
  if (open.gone) renderKey();  // nothing to load: it was deleted or expired
  else await openKey(open.key, { keepMessage: true });
}

export async function cancelEdit() {
  await leaveEdit();
  $("edit").focus();
}

async function takeTheirs() {
  await leaveEdit();
  $(open.gone ? "history" : "edit").focus();
}

export async function save(event, { overwrite = false } = {}) {
  if (event) event.preventDefault();
  clearMessage();
  const draft = parseDraft($("draft").value);
  if (!draft.ok) return showError(draft.error);
  // Against the version the draft was made from, so a change in between is a 412, never lost silently.
  const ifMatch = overwrite ? open.conflictVersion : open.baseVersion;
  try {
    if (open.gone) {
      await api("PUT", keyPath(open.key), { body: { value: draft.value } });
    } else {
      await api("PATCH", keyPath(open.key), { body: { value: draft.value }, ifMatch });
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 412) return showConflict();
    return showError(err);
  }
  open.editing = false;
  open.remote = null;
  $("conflict").hidden = true;
  await openKey(open.key, { keepMessage: true });
  showInfo(`Saved ${open.key} as version ${open.data.version}.`);
  $("edit").focus();
}

export async function showConflict() {
  let current;
  try {
    current = await readKey(open.key);
  } catch (err) {
    return showError(err);
  }
  open.remote = current ? { event: "update", version: current.version, value: current.value } : null;
  open.conflictVersion = current ? current.version : null;
  // Deleted meanwhile: the draft can create it again (a PUT); there is nothing to overwrite.
  open.gone = current ? null : "Deleted on the server.";
  renderKey();
  $("conflict-text").textContent = current
    ? `Conflict: ${open.key} is at version ${current.version} on the server; your draft was made from version ` +
      `${open.baseVersion}. Nothing was saved. Their value:`
    : `Conflict: ${open.key} no longer exists on the server. Nothing was saved.`;
  $("conflict-value").textContent = current ? pretty(current.value) : "";
  $("conflict-overwrite").hidden = !current;
  $("conflict").hidden = false;
  $("remote-change").hidden = true;
}

export function renderRemote() {
  const r = open.remote;
  const box = $("remote-change");
  if (!open.editing || !r || !$("conflict").hidden) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  $("remote-text").textContent =
    r.event === "update"
      ? "While you were editing, someone changed this key on the server: it is now " +
        `version ${r.version}. Your draft is untouched.`
      : `While you were editing, this key was ${r.event === "expired" ? "expired" : "deleted"} on the server ` +
        `(version ${r.version}). Your draft is untouched; saving it creates the key again.`;
  $("remote-show").hidden = r.event !== "update";
  $("remote-value").textContent = r.event === "update" ? pretty(r.value) : "";
}

// --- a new key ------------------------------------------------------------------------------------

function newKey() {
  if (open.editing && !window.confirm("Leave your unsaved draft?")) return;
  closeKey();
  $("detail-empty").hidden = true;
  $("create").hidden = false;
  // A new key starts from nothing: no value, TTL or ACL carried over from the last one made.
  $("create-key").value = browse.namespace ? browse.namespace + "." : "";
  for (const id of ["create-value", "create-ttl", "create-read", "create-write"]) $(id).value = "";
  checkJson("create-value");
  $("create-check").textContent = "";
  $("create-key").focus();
}

// The new-key form as {key, body} (the body of its PUT), once the key is known to be free; null after an error.
export async function readCreateForm() {
  clearMessage();
  const key = $("create-key").value.trim();
  if (!key) {
    showError(new Error("Name the key first."));
    return null;
  }
  const draft = parseDraft($("create-value").value);
  if (!draft.ok) {
    showError(draft.error);
    return null;
  }
  const body = { value: draft.value };
  const ttl = $("create-ttl").value.trim();
  if (ttl) body.ttl = Number(ttl);
  if (session.admin && ($("create-read").value.trim() || $("create-write").value.trim())) {
    body.acls = readAclFields("create-read", "create-write");
  }
  let existing;
  try {
    existing = await readKey(key);
  } catch (err) {
    showError(err);
    return null;
  }
  if (existing) {
    showError(new Error(`${key} exists already: open it to edit it.`));
    return null;
  }
  return { key, body };
}

async function create(event) {
  event.preventDefault();
  const form = await readCreateForm();
  if (!form) return;
  const { key, body } = form;
  const written = await attempt(() => api("PUT", keyPath(key), { body }));
  if (!written) return;
  listAdd(key);
  await openKey(key, { keepMessage: true });
  showInfo(`Created ${key} (version ${written.version}).`);
}

export function wireEditor() {
  $("draft").addEventListener("input", () => checkJson("draft"));
  $("create-value").addEventListener("input", () => checkJson("create-value"));
  $("edit").addEventListener("click", startEdit);
  $("edit-cancel").addEventListener("click", cancelEdit);
  $("editor").addEventListener("submit", (e) => save(e));
  $("conflict-overwrite").addEventListener("click", () => save(null, { overwrite: true }));
  $("conflict-discard").addEventListener("click", takeTheirs);
  $("remote-show").addEventListener("click", () => { $("remote-value").hidden = false; });
  $("remote-take").addEventListener("click", takeTheirs);
  $("remote-keep").addEventListener("click", () => { $("remote-change").hidden = true; $("draft").focus(); });
  $("new-key").addEventListener("click", newKey);
  $("create").addEventListener("submit", create);
  $("create-cancel").addEventListener("click", closeKey);
}
