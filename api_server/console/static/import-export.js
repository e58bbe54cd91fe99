// Import and export: a JSON file of full key names and their values. An import is previewed (what each key
// is now) and written in one transaction that holds that preview true; an export reads the shown namespace.

import { ApiError, api, errorText, readKey } from "./api.js";
import { $, downloadJson, plural } from "./dom.js";
import { browse } from "./key-list.js";
import { clearMessage, showError, showInfo } from "./messages.js";
import { TXN_MAX_OPS, opItem, refreshAfterTxn, sendTxn } from "./txn.js";

const PARALLEL_GETS = 8;  // export and the import preview read keys this many at a time

// The import file previewed: its put ops, the compares that hold the preview true, and what each key is now.
const importing = { name: null, entries: null };

// fn over every item, at most `limit` at a time, the answers in the items' order.
async function mapLimited(items, limit, fn) {
  const answers = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const at = next++;
      answers[at] = await fn(items[at]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return answers;
}

// A key name the preview can GET safely (the server decides the rest): the SPEC's characters, no empty
// segment (a `..` would be resolved away by the browser's URL), no /history or /rollback suffix.
function keyProblem(key) {
  if (!key || key.length > 256) return "must be 1–256 characters";
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9_:-]|[./](?=[A-Za-z0-9_:-]))*$/.test(key)) {
    return "must start with a letter or digit and hold only A–Z a–z 0–9 . _ - : / with no empty segment";
  }
  if (/\/(history|rollback)$/.test(key)) return "may not end in /history or /rollback";
  return null;
}

async function keyState(key) {
  try {
    const now = await readKey(key);
    return now ? { kind: "replace", version: now.version } : { kind: "create" };
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return { kind: "unreadable" };
    throw new Error(`${key}: ${errorText(err)}`);
  }
}

// No import previewed (cancelled, written, or signed out).
export function cancelImport() {
  importing.name = null;
  importing.entries = null;
  $("import-preview").hidden = true;
  $("import-keys").replaceChildren();
}

async function chooseImport() {
  const input = $("import-file");
  const file = input.files && input.files[0];
  if (!file) return;
  clearMessage();
  cancelImport();
  let doc;
  try {
    doc = JSON.parse(await file.text());
  } catch (err) {
    return showError(new Error(`${file.name} is not valid JSON (${err.message}). Nothing was imported.`));
  } finally {
    input.value = "";  // choosing the same file again (after a fix, or a failure) previews it again
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    return showError(new Error(`${file.name} must hold one JSON object of full key names and their values, ` +
      'like {"app.timeout": 30}. Nothing was imported.'));
  }
  const pairs = Object.entries(doc);
  if (!pairs.length) return showError(new Error(`${file.name} holds no keys. Nothing was imported.`));
  if (pairs.length > TXN_MAX_OPS) {
    return showError(new Error(`${file.name} holds ${pairs.length} keys, and one transaction takes at most ` +
      `${TXN_MAX_OPS}. Nothing was imported: split the file into parts of at most ${TXN_MAX_OPS} keys.`));
  }
  const bad = pairs.map(([key]) => [key, keyProblem(key)]).filter(([, problem]) => problem);
  if (bad.length) {
    return showError(new Error(`${file.name}: ${bad.map(([key, problem]) => `“${key}” ${problem}`).join("; ")}. ` +
      "Nothing was imported."));
  }
  // What each key is now: the preview's creates and replaces, and the compares that hold the import to them.
  let states;
  try {
    states = await mapLimited(pairs, PARALLEL_GETS, ([key]) => keyState(key));
  } catch (err) {
    return showError(new Error(`${file.name}: ${err.message}. Nothing was imported.`));
  }
  importing.name = file.name;
  importing.entries = pairs.map(([key, value], at) => {
    const state = states[at];
    const compare = state.kind === "replace" ? { key, version: state.version }
      : state.kind === "create" ? { key, exists: false } : null;  // unreadable: the server decides
    return { key, op: { op: "put", key, value }, compare, state, error: null };
  });
  renderImport();
  $("import-apply").focus();
}

function importCounts() {
  const count = (kind) => importing.entries.filter((entry) => entry.state.kind === kind).length;
  const parts = [`${count("create")} new`, `${count("replace")} replaced`];
  if (count("unreadable")) parts.push(`${count("unreadable")} you may not read (the server decides)`);
  return parts.join(", ");
}

function renderImport() {
  const entries = importing.entries;
  const n = entries.length;
  $("import-summary").textContent = `${importing.name}: ${plural(n, "key")} in one transaction: ${importCounts()}.`;
  const tag = { create: "new", replace: "replace", unreadable: "put" };
  $("import-keys").replaceChildren(...entries.map((entry) => opItem(entry, tag[entry.state.kind], null)));
  $("import-apply").textContent = `Import ${plural(n, "key")}`;
  $("import-preview").hidden = false;
}

async function applyImport() {
  const entries = importing.entries;
  if (!entries) return;
  clearMessage();
  const { body, answer, err, failure } = await sendTxn(entries, $("import-apply"), "Nothing was imported");
  if (failure) {
    renderImport();
    const again = err instanceof ApiError && err.status === 412
      ? "\nThe keys changed since the preview: choose the file again to see them as they are now." : "";
    showError(new Error(failure.text + again));
    return;
  }
  const name = importing.name;
  const counts = importCounts();
  cancelImport();
  await refreshAfterTxn(body);
  showInfo(`Imported ${plural(entries.length, "key")} from ${name} in one transaction (revision ${answer.revision}): ` +
    `${counts}.`);
}

// The shown namespace (or every key the user may read) as the object an import takes. The list names keys
// only, so each value is read on its own: a key deleted meanwhile is left out, and the file is not one
// snapshot of a single revision.
async function exportKeys() {
  clearMessage();
  const ns = browse.namespace;
  const button = $("export");
  button.disabled = true;
  try {
    const names = [];
    let cursor = null;
    do {
      const page = await api("GET", "/keys", { params: { namespace: ns, limit: 1000, cursor } });
      names.push(...page.keys);
      cursor = page.next || null;
    } while (cursor);
    const found = await mapLimited(names, PARALLEL_GETS, async (key) => {
      const data = await readKey(key);
      return data && [key, data.value];
    });
    const doc = Object.fromEntries(found.filter(Boolean));
    const name = downloadJson(ns || "all-keys", doc);
    showInfo(`Exported ${plural(Object.keys(doc).length, "key")}${ns ? ` of ${ns}` : ""} to ${name}.`);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

export function wireImportExport() {
  $("export").addEventListener("click", exportKeys);
  $("import-file").addEventListener("change", chooseImport);
  $("import-apply").addEventListener("click", applyImport);
  $("import-cancel").addEventListener("click", () => { cancelImport(); clearMessage(); });
}
