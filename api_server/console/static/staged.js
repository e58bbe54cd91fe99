// Staged changes: edits, new keys and deletes of several keys, held in this page until "Apply all" writes
// them in one transaction, each pinned to what the operator saw.

import { $, plural } from "./dom.js";
import { leaveEdit, parseDraft, readCreateForm } from "./editor.js";
import { closeKey, open, renderKey } from "./key-view.js";
import { clearMessage, showError, showInfo } from "./messages.js";
import { TXN_MAX_OPS, condition, opItem, preview, refreshAfterTxn, sendTxn } from "./txn.js";

// Changes waiting for "Apply all", by key (a transaction names a key at most once), in staging order. Each is
// one `op` of POST /txn and the `compare` that pins what the operator saw: {key, version} or {key, exists: false}.
const staged = new Map();

function stage(entry) {
  staged.set(entry.key, entry);  // a key staged again: its new change replaces the old one, in its place
  renderStaged();
  const n = staged.size;
  showInfo(`Staged ${entry.op.op} ${entry.key}. ${plural(n, "staged change")}: “Apply all” writes ` +
    `${n === 1 ? "it" : "them"} in one transaction.`);
}

async function stageEdit() {
  clearMessage();
  const draft = parseDraft($("draft").value);
  if (!draft.ok) return showError(draft.error);
  const key = open.key;
  // Pinned to what the draft was made from, as Save is: a change in between fails the whole transaction.
  const compare = open.gone ? { key, exists: false } : { key, version: open.baseVersion };
  stage({ key, op: { op: "put", key, value: draft.value }, compare, error: null });
  await leaveEdit();
  $("edit").focus();
}

async function stageCreate() {
  const form = await readCreateForm();
  if (!form) return;
  const { key, body } = form;
  stage({ key, op: { op: "put", key, ...body }, compare: { key, exists: false }, error: null });
  closeKey();
  $("new-key").focus();
}

function stageDelete() {
  clearMessage();
  const key = open.key;
  stage({ key, op: { op: "delete", key }, compare: { key, version: open.data.version }, error: null });
  renderKey();
}

function unstage(key) {
  staged.delete(key);
  renderStaged();
  showInfo(`Removed ${key} from the staged changes.`);
}

function discardStaged() {
  if (!window.confirm(`Discard ${plural(staged.size, "staged change")}?`)) return;
  staged.clear();
  renderStaged();
  clearMessage();
}

// Signed out: the next user starts with none.
export function forgetStaged() {
  staged.clear();
  renderStaged();
}

function renderStaged() {
  const list = $("staged-list");
  list.replaceChildren();
  for (const entry of staged.values()) list.append(opItem(entry, entry.op.op, () => unstage(entry.key)));
  $("staged-title").textContent = `Staged changes (${staged.size})`;
  $("staged").hidden = !staged.size;
  if (open.data) renderStagedNote();
}

// A staged key changed on the server after it was staged: its check will fail, so say so before "Apply all".
export function noteStagedChange(event) {
  const entry = staged.get(event.key);
  if (!entry || !entry.compare) return;
  const stale = entry.compare.exists === false ? event.event === "update" : event.version > entry.compare.version;
  if (!stale) return;
  entry.error = `Changed on the server since you staged it (${event.event}, now version ${event.version}): ` +
    "applying would fail. Remove it, or open the key and stage it again.";
  renderStaged();
}

// Beside the open key: its staged change, if it has one.
export function renderStagedNote() {
  const entry = open.key ? staged.get(open.key) : undefined;
  const note = $("key-staged");
  note.hidden = !entry;
  if (!entry) return;
  const what = entry.op.op === "delete" ? "delete" : `put ${preview(entry.op.value)}`;
  note.textContent = `Staged, not written yet: ${what}, ${condition(entry.compare)}. “Apply all” writes it with the ` +
    "other staged changes; staging this key again replaces it.";
}

async function applyStaged() {
  const entries = [...staged.values()];
  if (!entries.length) return;
  clearMessage();
  if (entries.length > TXN_MAX_OPS) {
    return showError(new Error(`${entries.length} staged changes, and one transaction takes at most ${TXN_MAX_OPS}. ` +
      "Remove some and apply them in two steps."));
  }
  const { body, answer, failure } = await sendTxn(entries, $("staged-apply"), "Nothing was written");
  if (failure) {
    renderStaged();
    showError(new Error(`${failure.text}\nYour ${plural(entries.length, "staged change")} are kept: remove or ` +
      "stage again what failed, then apply again."));
    return;
  }
  staged.clear();  // only now: a refused transaction keeps every staged change
  renderStaged();
  await refreshAfterTxn(body);
  const ops = new Map(body.ops.map((op) => [op.key, op.op]));
  const done = answer.results.map((r) =>
    ops.get(r.key) === "delete" ? `${r.key} deleted (version ${r.version})` : `${r.key} is version ${r.version}`);
  showInfo(`Applied ${plural(entries.length, "change")} in one transaction (revision ${answer.revision}): ` +
    `${done.join(", ")}.`);
}

export function wireStaged() {
  $("edit-stage").addEventListener("click", stageEdit);
  $("create-stage").addEventListener("click", stageCreate);
  $("delete-stage").addEventListener("click", stageDelete);
  $("staged-apply").addEventListener("click", applyStaged);
  $("staged-discard").addEventListener("click", discardStaged);
  // Staged changes live in this page only: leaving it would lose them.
  window.addEventListener("beforeunload", (e) => { if (staged.size) e.preventDefault(); });
}
