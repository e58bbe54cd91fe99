// DynConfig console. Plain ES module, no build step, no third-party code.
//
// The token the operator pastes lives in `session.token` (memory only: never localStorage, cookies or
// the URL). Every call goes through `api()` to the same HTTP API as any client, and live updates come
// from the same /watch WebSocket, so the console can never show more than its user may see.
// Text reaches the page only through textContent (never innerHTML), so stored values cannot inject markup.

const PAGE_SIZE = 50;
const HISTORY_PAGE = 20;
const AUDIT_PAGE = 50;
const RECONNECT_MAX_MS = 15000;
const TXN_MAX_OPS = 128;  // POST /txn takes 1–128 ops
const PARALLEL_GETS = 8;  // export and the import preview read keys this many at a time
const PREVIEW_CHARS = 80;

const $ = (id) => document.getElementById(id);

const session = { token: null, username: null, exp: null, admin: false };
const browse = { namespace: "", cursors: [null], page: 0, keys: [], total: null, next: null };
// The open key: its last answer from GET, whether it is being edited, and what the draft started from.
const open = { key: null, data: null, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null };
const live = { ws: null, revision: null, attempt: 0, timer: null, wanted: false };
const history = { cursor: null };
const audit = { cursor: null, query: null };
const namespaces = { loaded: null };  // the namespace whose ACL the form shows
// Changes waiting for "Apply all", by key (a transaction names a key at most once), in staging order. Each is
// one `op` of POST /txn and the `compare` that pins what the operator saw: {key, version} or {key, exists: false}.
const staged = new Map();
// The import file previewed: its put ops, the compares that hold the preview true, and what each key is now.
const importing = { name: null, entries: null };

// --- HTTP -----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const phrase = (body && body.error) || `HTTP ${status}`;
    const message = (body && body.message) || "";
    super(message ? `${status} ${phrase}: ${message}` : `${status} ${phrase}`);
    this.status = status;
    this.body = body || {};
  }
}

function keyPath(key) {
  return "/keys/" + key.split("/").map(encodeURIComponent).join("/");
}

async function api(method, path, { body, ifMatch, params } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (ifMatch !== undefined && ifMatch !== null) headers["If-Match"] = `"${ifMatch}"`;
  let url = path;
  if (params) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") query.set(name, value);
    }
    if ([...query].length) url += "?" + query.toString();
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { error: "Network error", message: `the server could not be reached (${err.message})` });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    if (response.status === 401) expired(data && data.message);
    throw new ApiError(response.status, data);
  }
  return data;
}

// --- messages -------------------------------------------------------------------------------------

function errorText(err) {
  let text = err instanceof ApiError ? err.message : String(err.message || err);
  const fields = err instanceof ApiError && err.body.fields;
  if (fields) {
    for (const [name, problems] of Object.entries(fields)) text += `\n• ${name}: ${[].concat(problems).join("; ")}`;
  }
  if (err instanceof ApiError && err.status === 429 && err.body.message) text += " (wait a minute and retry)";
  return text;
}

function showError(err) {
  const box = $("message");
  box.textContent = errorText(err);
  box.className = "message";
  box.hidden = false;
}

function showInfo(text) {
  const box = $("message");
  box.textContent = text;
  box.className = "message info";
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

async function attempt(action) {
  clearMessage();
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  }
}

// --- sign in --------------------------------------------------------------------------------------

function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("That is not a JWT (three base64url parts separated by dots).");
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(decodeURIComponent(escape(json)));
  } catch {
    throw new Error("The token's payload is not readable JSON.");
  }
}

async function signIn(event) {
  event.preventDefault();
  clearMessage();
  const token = $("token").value.trim();
  let claims;
  try {
    claims = decodeClaims(token);
  } catch (err) {
    showError(err);
    return;
  }
  session.token = token;
  session.username = claims.username || claims.sub || "?";
  session.exp = typeof claims.exp === "number" ? claims.exp : null;
  const submit = $("signin-form").querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    await api("GET", "/keys", { params: { limit: 1 } });  // the server's verdict on the token
    session.admin = await isAdmin();
  } catch (err) {
    session.token = null;
    showError(err);
    return;
  } finally {
    submit.disabled = false;
  }
  $("token").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !session.admin;
  $("who").textContent = `${session.username}${session.admin ? " (admin)" : ""}`;
  showView("keys");
  await loadPage(0);
  connect();
}

async function isAdmin() {
  try {
    await api("GET", "/audit", { params: { limit: 1 } });
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return false;
    throw err;
  }
}

function signOut(reason) {
  session.token = null;
  session.username = null;
  session.admin = false;
  live.wanted = false;
  const ws = live.ws;
  live.ws = null;
  if (ws) ws.close(1000, "signed out");
  live.revision = null;
  live.attempt = 0;
  clearTimeout(live.timer);
  // Nothing of this user's stays on the page for the next one.
  browse.keys = [];
  browse.total = null;
  $("key-list").replaceChildren();
  $("total").textContent = "";
  $("audit-rows").replaceChildren();
  $("audit-more").hidden = true;
  $("verify-result").hidden = true;
  for (const id of ["ns-name", "ns-read", "ns-write", "audit-key", "audit-actor", "audit-since"]) $(id).value = "";
  $("ns-status").textContent = "";
  namespaces.loaded = null;
  staged.clear();
  renderStaged();
  cancelImport();
  setLive("offline", "Offline");
  closeKey();
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("who").textContent = "";
  if (reason) showError(new Error(reason));
  $("token").focus();
}

function expired(message) {
  if (session.token) signOut(`Signed out: ${message || "the token is no longer valid"}. Paste a fresh token to go on.`);
}

// --- views ----------------------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.view === name));
  for (const view of ["keys", "namespaces", "audit"]) $(`view-${view}`).hidden = view !== name;
}

// --- the key list ---------------------------------------------------------------------------------

function inNamespace(key) {
  const ns = browse.namespace;
  return !ns || key.startsWith(ns + ".") || key.startsWith(ns + "/");
}

async function loadPage(page) {
  const cursor = browse.cursors[page];
  const data = await attempt(() =>
    api("GET", "/keys", { params: { namespace: browse.namespace, limit: PAGE_SIZE, cursor } }));
  if (!data) return;
  browse.page = page;
  browse.keys = data.keys;
  browse.total = data.total;
  browse.next = data.next || null;
  browse.cursors[page + 1] = browse.next;
  renderList();
}

function renderList() {
  const filter = $("filter").value.trim().toLowerCase();
  const list = $("key-list");
  list.replaceChildren();
  const shown = browse.keys.filter((k) => !filter || k.toLowerCase().includes(filter));
  for (const key of shown) {
    const item = document.createElement("li");
    item.dataset.key = key;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = key;
    if (key === open.key) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openKey(key));
    item.append(button);
    list.append(item);
  }
  const where = browse.namespace ? ` in ${browse.namespace}` : "";
  const total = browse.total;
  const count = typeof total === "number" ? `${total} key${total === 1 ? "" : "s"}${where}` : "";
  const page = `page ${browse.page + 1}`;
  $("total").textContent = [count, page, filter ? `${shown.length} match “${filter}”` : ""].filter(Boolean).join(" · ");
  $("prev-page").disabled = browse.page === 0;
  $("next-page").disabled = !browse.next;
}

function listAdd(key) {
  if (!inNamespace(key) || browse.keys.includes(key)) return;
  const last = browse.keys[browse.keys.length - 1];
  // Only where it belongs on this page: a key past a full page's end shows up on a later page.
  if (browse.next && last !== undefined && key > last) return;
  browse.keys.push(key);
  browse.keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (typeof browse.total === "number") browse.total += 1;
  renderList();
  flash(key);
}

function listRemove(key) {
  const at = browse.keys.indexOf(key);
  if (at < 0) return;
  browse.keys.splice(at, 1);
  if (typeof browse.total === "number") browse.total -= 1;
  renderList();
}

function flash(key) {
  const item = [...$("key-list").children].find((li) => li.dataset.key === key);
  if (!item) return;
  item.classList.add("flash");
  setTimeout(() => item.classList.remove("flash"), 1500);
}

// --- one key --------------------------------------------------------------------------------------

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function closeKey() {
  Object.assign(open, { key: null, data: null, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null });
  $("key").hidden = true;
  $("create").hidden = true;
  $("detail-empty").hidden = false;
}

async function openKey(key, { keepMessage = false } = {}) {
  if (open.editing && open.key !== key && !window.confirm("Leave your unsaved draft?")) return;
  if (!keepMessage) clearMessage();
  let data;
  try {
    data = await api("GET", keyPath(key), { params: session.admin ? { include: "acls" } : undefined });
  } catch (err) {
    showError(err);
    return;
  }
  if (open.editing && open.key === key) return;  // Edit was pressed while this answer was on its way
  Object.assign(open, { key, data, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null });
  $("create").hidden = true;
  $("detail-empty").hidden = true;
  $("key").hidden = false;
  $("history-pane").hidden = true;
  $("acl-form").hidden = true;
  renderKey();
  renderList();
}

function renderKey() {
  const d = open.data;
  $("key-name").textContent = open.key;
  $("key-version").textContent = String(d.version);
  $("key-revision").textContent = String(d.revision);
  $("key-modified").textContent = new Date(d.lastModified).toLocaleString();
  $("key-acls").textContent = describeAcls(d);
  $("key-value").textContent = pretty(d.value);
  $("key-gone").hidden = !open.gone;
  $("key-gone").textContent = open.gone || "";
  $("editor").hidden = !open.editing;
  $("key-value").hidden = open.editing;
  $("edit").disabled = open.editing || !!open.gone;
  $("acl-edit").disabled = !!open.gone;
  $("delete").disabled = !!open.gone;
  $("delete-stage").disabled = open.editing || !!open.gone;
  $("delete-confirm").hidden = true;
  renderStagedNote();
  renderRemote();
  tickTtl();
}

function describeAcls(d) {
  if (!("acls" in d)) return "visible to admins";
  if (d.acls === null) return "none of its own: the namespace's ACL applies";
  const list = (entries) => (entries.length ? entries.join(", ") : "nobody");
  return `read: ${list(d.acls.read)} · write: ${list(d.acls.write)}`;
}

function tickTtl() {
  const d = open.data;
  if (!d || $("key").hidden) return;
  if (open.gone) {
    $("key-ttl").textContent = "—";
  } else if (!d.expiresAt) {
    $("key-ttl").textContent = "none (never expires)";
  } else {
    const left = Math.max(0, Math.round((Date.parse(d.expiresAt) - Date.now()) / 1000));
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    const clock = h ? `${h} h ${m} min ${s} s` : m ? `${m} min ${s} s` : `${s} s`;
    $("key-ttl").textContent = left ? `${d.ttl} s, expires in ${clock}` : `${d.ttl} s, expiring now`;
  }
}

function startEdit() {
  open.editing = true;
  open.baseVersion = open.data.version;
  open.remote = null;
  $("draft").value = pretty(open.data.value);
  $("conflict").hidden = true;
  renderKey();
  $("draft").focus();
}

async function cancelEdit() {
  open.editing = false;
  open.remote = null;
  $("conflict").hidden = true;
  if (open.gone) renderKey();
  else await openKey(open.key, { keepMessage: true });
  $("edit").focus();
}

function parseDraft(text) {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, error: new Error(`The value is not valid JSON: ${err.message}. Strings need quotes: "text".`) };
  }
}

async function save(event, { overwrite = false } = {}) {
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

async function showConflict() {
  let current = null;
  try {
    current = await api("GET", keyPath(open.key));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) return showError(err);
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

async function takeTheirs() {
  open.editing = false;
  open.remote = null;
  $("conflict").hidden = true;
  $("remote-change").hidden = true;
  if (open.gone) renderKey();  // nothing to load: it was deleted or expired
  else await openKey(open.key, { keepMessage: true });
  $(open.gone ? "history" : "edit").focus();
}

function renderRemote() {
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

async function deleteKey() {
  const key = open.key;
  const done = await attempt(() => api("DELETE", keyPath(key), { ifMatch: open.data.version }));
  if (done === undefined) return;  // the error is shown (a 204 answers null)
  listRemove(key);
  closeKey();
  showInfo(`Deleted ${key}.`);
  $("new-key").focus();
}

// --- history and rollback -------------------------------------------------------------------------

async function showHistory(more = false) {
  if (!more) {
    history.cursor = null;
    $("history-rows").replaceChildren();
  }
  const data = await attempt(() =>
    api("GET", keyPath(open.key) + "/history", { params: { limit: HISTORY_PAGE, cursor: history.cursor } }));
  if (!data) return;
  $("history-pane").hidden = false;
  for (const v of data.versions) {
    const row = document.createElement("tr");
    const cells = [String(v.version), v.event, v.event === "update" ? JSON.stringify(v.value) : "—", v.actor || "",
      new Date(v.at).toLocaleString()];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 2) td.className = "json";
      row.append(td);
    });
    const action = document.createElement("td");
    if (v.event === "update" && open.data && (open.gone || v.version !== open.data.version)) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Roll back to v${v.version}`;
      button.addEventListener("click", () => rollback(v.version));
      action.append(button);
    }
    row.append(action);
    $("history-rows").append(row);
  }
  history.cursor = data.next || null;
  $("history-more").hidden = !history.cursor;
}

async function rollback(version) {
  if (open.editing && !window.confirm("Roll back and discard your unsaved draft?")) return;
  clearMessage();
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

// --- ACLs -----------------------------------------------------------------------------------------

function entries(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

function editAcl() {
  const acls = open.data.acls;
  $("acl-read").value = acls ? acls.read.join(", ") : "";
  $("acl-write").value = acls ? acls.write.join(", ") : "";
  $("acl-form").hidden = false;
  $("acl-read").focus();
}

async function saveAcl(acls) {
  clearMessage();
  try {
    await api("PATCH", keyPath(open.key), { body: { acls }, ifMatch: open.data.version });
  } catch (err) {
    if (err instanceof ApiError && err.status === 412) {
      showError(new Error(`${err.message}. The key changed meanwhile; its ACL was not saved. Look again and retry.`));
      await openKey(open.key, { keepMessage: true });
      return;
    }
    return showError(err);
  }
  $("acl-form").hidden = true;
  await openKey(open.key, { keepMessage: true });
  showInfo(`Saved the ACL of ${open.key}.`);
  $("acl-edit").focus();
}

// --- creating -------------------------------------------------------------------------------------

function newKey() {
  if (open.editing && !window.confirm("Leave your unsaved draft?")) return;
  closeKey();
  $("detail-empty").hidden = true;
  $("create").hidden = false;
  $("create-key").value = browse.namespace ? browse.namespace + "." : "";
  $("create-key").focus();
}

// The new-key form as {key, body} (the body of its PUT), once the key is known to be free; null after an error.
async function readCreateForm() {
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
    body.acls = { read: entries($("create-read").value), write: entries($("create-write").value) };
  }
  try {
    await api("GET", keyPath(key));
    showError(new Error(`${key} exists already: open it to edit it.`));
    return null;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      showError(err);
      return null;
    }
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

// --- staged changes: several keys in one transaction ----------------------------------------------

function preview(value) {
  const text = JSON.stringify(value);
  return text.length > PREVIEW_CHARS ? text.slice(0, PREVIEW_CHARS - 1) + "…" : text;
}

function condition(compare) {
  if (!compare) return "";
  return compare.exists === false ? "if it does not exist" : `if still version ${compare.version}`;
}

function checkText(compare) {
  if ("exists" in compare) return `${compare.key} ${compare.exists ? "exists" : "does not exist"}`;
  return `${compare.key} is at version ${compare.version}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

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
  open.editing = false;
  open.remote = null;
  $("conflict").hidden = true;
  if (open.gone) renderKey();
  else await openKey(key, { keepMessage: true });
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

function renderStaged() {
  const list = $("staged-list");
  list.replaceChildren();
  for (const entry of staged.values()) list.append(opItem(entry, entry.op.op, () => unstage(entry.key)));
  $("staged-title").textContent = `Staged changes (${staged.size})`;
  $("staged").hidden = !staged.size;
  if (open.data) renderStagedNote();
}

// One change of a transaction as a list item: what it does, to which key, on which condition, and why it failed.
function opItem(entry, tag, remove) {
  const item = document.createElement("li");
  item.dataset.key = entry.key;
  if (entry.error) item.classList.add("failed");
  const head = document.createElement("div");
  head.className = "op-head";
  const kind = document.createElement("span");
  kind.className = `op ${entry.op.op}`;
  kind.textContent = tag;
  const name = document.createElement("code");
  name.className = "op-key";
  name.textContent = entry.key;
  const when = document.createElement("span");
  when.className = "op-when muted";
  when.textContent = condition(entry.compare);
  const label = document.createElement("div");
  label.className = "op-label";
  label.append(name, when);
  head.append(kind, label);
  if (remove) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Remove";
    button.setAttribute("aria-label", `Remove ${entry.key} from the staged changes`);
    button.addEventListener("click", remove);
    head.append(button);
  }
  item.append(head);
  if (entry.op.op !== "delete") {
    const value = document.createElement("pre");
    value.className = "op-value";
    const extra = [entry.op.ttl ? `ttl ${entry.op.ttl} s` : "", entry.op.acls ? "own ACL" : ""].filter(Boolean);
    value.textContent = preview(entry.op.value) + (extra.length ? `  (${extra.join(", ")})` : "");
    item.append(value);
  }
  if (entry.error) {
    const why = document.createElement("p");
    why.className = "op-error";
    why.textContent = entry.error;
    item.append(why);
  }
  return item;
}

// A staged key changed on the server after it was staged: its check will fail, so say so before "Apply all".
function noteStagedChange(event) {
  const entry = staged.get(event.key);
  if (!entry || !entry.compare) return;
  const stale = entry.compare.exists === false ? event.event === "update" : event.version > entry.compare.version;
  if (!stale) return;
  entry.error = `Changed on the server since you staged it (${event.event}, now version ${event.version}): ` +
    "applying would fail. Remove it, or open the key and stage it again.";
  renderStaged();
}

function renderStagedNote() {
  const entry = open.key ? staged.get(open.key) : undefined;
  const note = $("key-staged");
  note.hidden = !entry;
  if (!entry) return;
  const what = entry.op.op === "delete" ? "delete" : `put ${preview(entry.op.value)}`;
  note.textContent = `Staged, not written yet: ${what}, ${condition(entry.compare)}. “Apply all” writes it with the ` +
    "other staged changes; staging this key again replaces it.";
}

function txnBody(entries) {
  const body = { ops: entries.map((entry) => entry.op) };
  const compare = entries.map((entry) => entry.compare).filter(Boolean);
  if (compare.length) body.compare = compare;
  return body;
}

// Why POST /txn refused `body`: the compare or op it names (by `in` and `index`) and the server's reason.
// `key` is the key of that part, when the refusal names one.
async function explainTxnFailure(err, body, nothing) {
  if (!(err instanceof ApiError) || err.status === 0) {
    return { key: null, reason: null, text: `${errorText(err)}. Whether the transaction was written is not known: ` +
      "look at the keys before applying it again." };
  }
  const where = err.body.in;
  const parts = where === "compare" || where === "ops" ? body[where] : undefined;
  const part = parts && Number.isInteger(err.body.index) ? parts[err.body.index] : undefined;
  if (!part) return { key: null, reason: null, text: `${nothing}: ${errorText(err)}` };
  const what = where === "compare" ? `the check that ${checkText(part)}` : `${part.op} ${part.key}`;
  const position = `${where === "compare" ? "check" : "change"} ${err.body.index + 1} of ${parts.length}`;
  let reason = errorText(err);
  if (err.status === 412) reason = `${reason.replace(/[\s.]*$/, ".")}${await currentState(part.key)}`;
  return { key: part.key, reason, text: `${nothing}: ${what} (${position}) failed. ${reason}` };
}

async function currentState(key) {
  try {
    const now = await api("GET", keyPath(key));
    return ` It is at version ${now.version} now.`;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return " It does not exist now.";
    return "";
  }
}

// After a transaction: the list and the open key as the server has them now (the live frame follows too).
async function refreshAfterTxn(body) {
  await loadPage(browse.page);
  const mine = body.ops.find((op) => op.key === open.key);
  if (!mine || open.editing) return;
  if (mine.op === "delete") closeKey();
  else await openKey(open.key, { keepMessage: true });
}

async function applyStaged() {
  const entries = [...staged.values()];
  if (!entries.length) return;
  clearMessage();
  if (entries.length > TXN_MAX_OPS) {
    return showError(new Error(`${entries.length} staged changes, and one transaction takes at most ${TXN_MAX_OPS}. ` +
      "Remove some and apply them in two steps."));
  }
  for (const entry of entries) entry.error = null;
  const body = txnBody(entries);
  const button = $("staged-apply");
  button.disabled = true;
  let answer;
  try {
    answer = await api("POST", "/txn", { body });
  } catch (err) {
    const failure = await explainTxnFailure(err, body, "Nothing was written");
    const culprit = failure.key && staged.get(failure.key);
    if (culprit) culprit.error = failure.reason;
    renderStaged();
    showError(new Error(`${failure.text}\nYour ${plural(entries.length, "staged change")} are kept: remove or ` +
      "stage again what failed, then apply again."));
    return;
  } finally {
    button.disabled = false;
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

// --- import and export ----------------------------------------------------------------------------

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
    return { kind: "replace", version: (await api("GET", keyPath(key))).version };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { kind: "create" };
    if (err instanceof ApiError && err.status === 403) return { kind: "unreadable" };
    throw new Error(`${key}: ${errorText(err)}`);
  }
}

function cancelImport() {
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
  for (const entry of entries) entry.error = null;
  const body = txnBody(entries);
  const button = $("import-apply");
  button.disabled = true;
  let answer;
  try {
    answer = await api("POST", "/txn", { body });
  } catch (err) {
    const failure = await explainTxnFailure(err, body, "Nothing was imported");
    const culprit = failure.key && entries.find((entry) => entry.key === failure.key);
    if (culprit) culprit.error = failure.reason;
    renderImport();
    const again = err instanceof ApiError && err.status === 412
      ? "\nThe keys changed since the preview: choose the file again to see them as they are now." : "";
    showError(new Error(failure.text + again));
    return;
  } finally {
    button.disabled = false;
  }
  const name = importing.name;
  const counts = importCounts();
  cancelImport();
  await refreshAfterTxn(body);
  showInfo(`Imported ${plural(entries.length, "key")} from ${name} in one transaction (revision ${answer.revision}): ` +
    `${counts}.`);
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
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
      try {
        return [key, (await api("GET", keyPath(key))).value];
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) return null;
        throw err;
      }
    });
    const doc = Object.fromEntries(found.filter(Boolean));
    const name = `${(ns || "all-keys").replace(/[^A-Za-z0-9._-]/g, "_")}.json`;
    download(name, JSON.stringify(doc, null, 2) + "\n");
    showInfo(`Exported ${plural(Object.keys(doc).length, "key")}${ns ? ` of ${ns}` : ""} to ${name}.`);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// --- namespaces -----------------------------------------------------------------------------------

async function loadNamespace() {
  const ns = $("ns-name").value.trim();
  if (!ns) return;
  clearMessage();
  try {
    const data = await api("GET", "/namespaces/" + encodeURIComponent(ns));
    $("ns-read").value = data.acls.read.join(", ");
    $("ns-write").value = data.acls.write.join(", ");
    $("ns-status").textContent = `${ns} has an ACL.`;
    namespaces.loaded = ns;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      $("ns-read").value = "";
      $("ns-write").value = "";
      $("ns-status").textContent = `${ns} has no ACL of its own.`;
      namespaces.loaded = ns;
      return;
    }
    showError(err);
  }
}

async function saveNamespace(event) {
  event.preventDefault();
  const ns = $("ns-name").value.trim();
  if (namespaces.loaded !== ns) {
    // Enter in the name field, or Save before Load: never replace an ACL the user has not seen.
    await loadNamespace();
    return;
  }
  const acls = { read: entries($("ns-read").value), write: entries($("ns-write").value) };
  if (!acls.read.length && !acls.write.length && !window.confirm(`Nobody but admins could use keys under ${ns}. Save?`)) return;
  const ok = await attempt(() => api("PUT", "/namespaces/" + encodeURIComponent(ns), { body: { acls } }));
  if (ok !== undefined) $("ns-status").textContent = `Saved the ACL of ${ns}.`;
}

async function deleteNamespace() {
  const ns = $("ns-name").value.trim();
  if (!ns) return;
  clearMessage();
  try {
    await api("DELETE", "/namespaces/" + encodeURIComponent(ns));
    $("ns-status").textContent = `Removed the ACL of ${ns}.`;
    $("ns-read").value = "";
    $("ns-write").value = "";
  } catch (err) {
    showError(err);
  }
}

// --- audit ----------------------------------------------------------------------------------------

async function searchAudit(event, more = false) {
  if (event) event.preventDefault();
  if (!more) {
    const since = $("audit-since").value;
    audit.query = {
      key: $("audit-key").value.trim(),
      actor: $("audit-actor").value.trim(),
      since: since ? new Date(since).toISOString() : "",
    };
    audit.cursor = null;
    $("audit-rows").replaceChildren();
  }
  const data = await attempt(() =>
    api("GET", "/audit", { params: { ...audit.query, limit: AUDIT_PAGE, cursor: audit.cursor } }));
  if (!data) return;
  for (const r of data.records) {
    const row = document.createElement("tr");
    // A record without its own seal says what vouches for it (GET /audit `seal`; verify proves it).
    const seal = { adopted: " (adopted, no seal)", none: " (NO SEAL: nothing vouches for it)" }[r.seal] || "";
    for (const text of [new Date(r.at).toLocaleString(), r.actor || "", r.action, r.key || "",
      r.version === undefined ? "" : String(r.version), r.outcome + seal]) {
      const td = document.createElement("td");
      td.textContent = text;
      row.append(td);
    }
    $("audit-rows").append(row);
  }
  audit.cursor = data.next || null;
  $("audit-more").hidden = !audit.cursor;
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

// --- live updates ---------------------------------------------------------------------------------

function setLive(state, text, title = "") {
  const el = $("live");
  el.className = `live ${state}`;
  el.textContent = text;
  el.title = title;
}

function watchUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/watch`;
}

function connect() {
  live.wanted = true;
  if (live.ws) {
    const old = live.ws;
    live.ws = null;
    old.close(1000, "replaced");
  }
  setLive("connecting", live.attempt ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = new WebSocket(watchUrl());
  } catch (err) {
    return scheduleReconnect(`cannot open ${watchUrl()}: ${err.message}`);
  }
  live.ws = ws;
  ws.addEventListener("open", () => {
    const message = { token: session.token, subscribe: ["*"] };
    if (live.revision !== null) message.since_version = live.revision;
    ws.send(JSON.stringify(message));
  });
  ws.addEventListener("message", (event) => {
    if (live.ws !== ws) return;  // a socket replaced or closed by sign-out
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    onWatchMessage(msg);
  });
  ws.addEventListener("close", (event) => {
    if (live.ws !== ws) return;
    live.ws = null;
    if (!live.wanted) return;
    const why = event.reason ? `${event.code}: ${event.reason}` : `close code ${event.code}`;
    if (event.code === 4401) {
      expired(event.reason || "the token expired");
      return;
    }
    scheduleReconnect(why);
  });
}

function scheduleReconnect(why) {
  live.attempt += 1;
  const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** Math.min(live.attempt, 5)) * (0.5 + Math.random() / 2);
  setLive("connecting", "Reconnecting…", `Live updates interrupted (${why}); retrying in ${Math.round(delay / 1000)} s`);
  clearTimeout(live.timer);
  live.timer = setTimeout(() => { if (live.wanted && session.token) connect(); }, delay);
}

function onWatchMessage(msg) {
  switch (msg.event) {
    case "subscribed":
      live.attempt = 0;
      if (live.revision === null) live.revision = msg.revision;
      setLive("online", "Live", `Following every change you may read (revision ${msg.revision})`);
      break;
    case "update":
    case "delete":
    case "expired":
      live.revision = Math.max(live.revision || 0, msg.revision);
      onChange(msg);
      break;
    case "txn":
      // One transaction, one frame: its changes share one revision.
      live.revision = Math.max(live.revision || 0, msg.revision);
      for (const change of msg.changes || []) onChange(change);
      break;
    case "reset":
      // The server could not replay from our revision: start from its state again.
      live.revision = msg.revision;
      loadPage(browse.page);
      if (open.key && !open.editing) openKey(open.key, { keepMessage: true });
      break;
    case "error":
      showError(new Error(`Live updates: ${msg.error}${msg.message ? ": " + msg.message : ""}`));
      break;
    default:
      break;
  }
}

function onChange(event) {
  noteStagedChange(event);
  if (event.event === "update") listAdd(event.key);
  else listRemove(event.key);
  if (event.key !== open.key) {
    if (event.event === "update") flash(event.key);
    return;
  }
  if (open.data && event.version <= open.data.version) return;  // already shown (or a late replay)
  if (open.remote && event.version <= open.remote.version) return;
  if (open.editing) {
    // Never touch the draft: say what happened and let the user choose.
    open.remote = { event: event.event, version: event.version, value: event.value };
    open.gone = event.event === "update" ? null : `${event.event === "expired" ? "Expired" : "Deleted"} on the server (version ${event.version}).`;
    if (!$("conflict").hidden) {
      showConflict();  // the conflict box must show what an overwrite would replace now
      return;
    }
    renderRemote();
    return;
  }
  if (event.event === "update") {
    openKey(event.key, { keepMessage: true });
  } else {
    open.gone = `${event.event === "expired" ? "Expired" : "Deleted"} on the server (version ${event.version}).`;
    renderKey();
  }
}

// --- wiring ---------------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("browse").addEventListener("submit", (e) => {
    e.preventDefault();
    browse.namespace = $("namespace").value.trim();
    browse.cursors = [null];
    loadPage(0);
  });
  $("filter").addEventListener("input", renderList);
  $("prev-page").addEventListener("click", () => loadPage(Math.max(0, browse.page - 1)));
  $("next-page").addEventListener("click", () => loadPage(browse.page + 1));
  $("new-key").addEventListener("click", newKey);
  $("create").addEventListener("submit", create);
  $("create-cancel").addEventListener("click", closeKey);
  $("edit").addEventListener("click", startEdit);
  $("edit-cancel").addEventListener("click", cancelEdit);
  $("edit-stage").addEventListener("click", stageEdit);
  $("create-stage").addEventListener("click", stageCreate);
  $("delete-stage").addEventListener("click", stageDelete);
  $("staged-apply").addEventListener("click", applyStaged);
  $("staged-discard").addEventListener("click", discardStaged);
  $("export").addEventListener("click", exportKeys);
  $("import-file").addEventListener("change", chooseImport);
  $("import-apply").addEventListener("click", applyImport);
  $("import-cancel").addEventListener("click", () => { cancelImport(); clearMessage(); });
  // Staged changes live in this page only: leaving it would lose them.
  window.addEventListener("beforeunload", (e) => { if (staged.size) e.preventDefault(); });
  $("editor").addEventListener("submit", (e) => save(e));
  $("conflict-overwrite").addEventListener("click", () => save(null, { overwrite: true }));
  $("conflict-discard").addEventListener("click", takeTheirs);
  $("remote-show").addEventListener("click", () => { $("remote-value").hidden = false; });
  $("remote-take").addEventListener("click", takeTheirs);
  $("remote-keep").addEventListener("click", () => { $("remote-change").hidden = true; $("draft").focus(); });
  $("delete").addEventListener("click", () => { $("delete-confirm").hidden = false; $("delete-confirm").focus(); });
  $("delete-confirm").addEventListener("click", deleteKey);
  $("history").addEventListener("click", () => showHistory());
  $("history-more").addEventListener("click", () => showHistory(true));
  $("acl-edit").addEventListener("click", editAcl);
  $("acl-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveAcl({ read: entries($("acl-read").value), write: entries($("acl-write").value) });
  });
  $("acl-inherit").addEventListener("click", () => saveAcl(null));
  $("acl-cancel").addEventListener("click", () => { $("acl-form").hidden = true; });
  $("ns-load").addEventListener("click", loadNamespace);
  $("ns-form").addEventListener("submit", saveNamespace);
  $("ns-delete").addEventListener("click", deleteNamespace);
  $("audit-form").addEventListener("submit", (e) => searchAudit(e));
  $("audit-more").addEventListener("click", () => searchAudit(null, true));
  $("audit-verify").addEventListener("click", verifyChain);
  setInterval(tickTtl, 1000);
  $("token").focus();
}

wire();
