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
const LONG_VALUE_CHARS = 400;  // a longer value shows shortened in the history, with "Show all" and "Download"
const WARN_BEFORE_EXPIRY_S = 120;  // the token's renewal prompt opens this long before its `exp`
const SEARCH_DELAY_MS = 250;
const DIFF_CONTEXT = 3;  // unchanged lines shown around each change
const DIFF_MAX_CELLS = 4_000_000;  // beyond this many line pairs, the changed middle is shown whole

const $ = (id) => document.getElementById(id);

const session = { token: null, username: null, exp: null, admin: false, expired: null };
// The list: one page of {key, version, lastModified, ttl, expiresAt}, found by namespace and search text `q`.
const browse = { namespace: "", q: "", cursors: [null], page: 0, keys: [], total: null, next: null, sort: "name", timer: null };
// What the server can tell (it may be older than this page): `include=access` on GET /keys/{key}.
const server = { access: true };
// Where the URL's hash points (#key=…, #view=…, &ns=…), kept across a reload (the token is not).
let route = parseHash();
// The open key: its last answer from GET, whether it is being edited, and what the draft started from.
const open = { key: null, data: null, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null };
const live = { ws: null, revision: null, attempt: 0, timer: null, wanted: false };
const history = { cursor: null, versions: new Map(), rollback: null };
const audit = { cursor: null, query: null };
// The namespace whose ACL the form shows (`current`: that ACL, null for none), and a load on its way.
const namespaces = { loaded: null, current: null, loading: null };
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

// `verifying`: a token being tried at sign-in or renewal, whose 401 is its own answer, not the session's expiry.
async function api(method, path, { body, ifMatch, params, verifying = false } = {}) {
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
    if (response.status === 401 && !verifying) expired(data && data.message);
    throw new ApiError(response.status, data);
  }
  return data;
}

// --- messages -------------------------------------------------------------------------------------

function errorText(err) {
  let text = err instanceof ApiError ? err.message : String(err.message || err);
  const fields = err instanceof ApiError && err.body.fields;
  if (fields) {
    // Only what the message does not say already (a 400's message often is its one field's problem).
    for (const [name, problems] of Object.entries(fields)) {
      const fresh = [].concat(problems).map(String).filter((problem) => !text.includes(problem));
      if (fresh.length) text += `\n• ${name}: ${fresh.join("; ")}`;
    }
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

// Sign in, or (signed in already) go on with a fresh token: the same user keeps the page as it is (the open
// key, the draft, staged changes) and the open /watch socket is sent the token; another user starts afresh.
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
  const username = claims.username || claims.sub || "?";
  const renewing = session.username !== null && session.username === username;
  const previous = session.token;
  session.token = token;
  const submit = $("signin-submit");
  submit.disabled = true;
  let admin = session.admin;
  try {
    await api("GET", "/keys", { params: { limit: 1 }, verifying: true });  // the server's verdict on the token
    if (!renewing) admin = await isAdmin();
  } catch (err) {
    session.token = previous;
    showError(err);
    return;
  } finally {
    submit.disabled = false;
  }
  if (session.username !== null && !renewing) signOut();  // another user: nothing of the last one stays
  session.token = token;
  session.admin = admin;
  session.username = username;
  session.exp = typeof claims.exp === "number" ? claims.exp : null;
  session.expired = null;
  $("token").value = "";
  $("signin").hidden = true;
  $("signin").classList.remove("renew");
  if (renewing) {
    const ws = live.ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ token }));
    else connect();  // closed at expiry: resume from the last revision seen, nothing missed
    showInfo("Token renewed: you stay signed in, and the page is as you left it.");
    return;
  }
  $("app").hidden = false;
  $("signout").hidden = false;
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !session.admin;
  $("who").textContent = `${session.username}${session.admin ? " (admin)" : ""}`;
  await followRoute(route);
  connect();
}

async function isAdmin() {
  try {
    await api("GET", "/audit", { params: { limit: 1 }, verifying: true });
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
  session.exp = null;
  session.expired = null;
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
  $("folders").replaceChildren();
  $("crumbs").replaceChildren();
  $("total").textContent = "";
  $("audit-rows").replaceChildren();
  $("audit-more").hidden = true;
  $("audit-empty").hidden = true;
  $("verify-result").hidden = true;
  $("ns-rows").replaceChildren();
  for (const id of ["ns-name", "ns-read", "ns-write", "audit-key", "audit-actor", "audit-since", "audit-action",
    "audit-outcome", "filter"]) $(id).value = "";
  $("ns-status").textContent = "";
  namespaces.loaded = null;
  staged.clear();
  renderStaged();
  cancelImport();
  setLive("offline", "Offline");
  closeKey();
  $("app").hidden = true;
  $("signout").hidden = true;
  showSignIn(false);
  $("who").textContent = "";
  if (reason) showError(new Error(reason));
  $("token").focus();
}

const SIGNIN_TEXT = [...$("signin-text").childNodes].map((node) => node.cloneNode(true));  // the page's own words

// The sign-in box, as the first sign-in or (renew) as the prompt for a fresh token above the kept page.
function showSignIn(renew, text) {
  const box = $("signin");
  box.classList.toggle("renew", renew);
  $("signin-title").textContent = renew ? "Renew your token" : "Sign in";
  $("signin-submit").textContent = renew ? "Use this token" : "Sign in";
  if (renew) $("signin-text").textContent = text;
  else $("signin-text").replaceChildren(...SIGNIN_TEXT.map((node) => node.cloneNode(true)));
  box.hidden = false;
}

// The token is no longer accepted: the page stays (the open key, a draft, staged changes) until a fresh one comes.
function expired(message) {
  if (!session.token || session.username === null || session.expired) return;
  session.expired = message || "the token is no longer valid";
  live.wanted = false;
  const ws = live.ws;
  live.ws = null;
  if (ws) ws.close(1000, "token expired");
  clearTimeout(live.timer);
  setLive("offline", "Offline", "Paste a fresh token to follow changes again");
  showSignIn(true, `Signed in as ${session.username} until the token expired. Paste a fresh token for ` +
    `${session.username}: this page, your draft and staged changes are kept, and live updates resume where they stopped.`);
  showError(new Error(`Signed out: ${session.expired}. Paste a fresh token above to go on.`));
  $("token").focus();
}

// Once a second: the renewal prompt from WARN_BEFORE_EXPIRY_S before the token's `exp` (the page knows it).
function tickSession() {
  if (!session.token || session.expired || !session.exp) return;
  const left = Math.round(session.exp - Date.now() / 1000);
  if (left > WARN_BEFORE_EXPIRY_S) return;
  const text = left > 0
    ? `Your token expires in ${clock(left)}. Paste a fresh token for ${session.username} to stay signed in: ` +
      "this page, your draft and staged changes are kept."
    : `Your token has expired. Paste a fresh token for ${session.username} to go on: this page, your draft and ` +
      "staged changes are kept.";
  if ($("signin").hidden || $("signin-text").textContent !== text) showSignIn(true, text);
}

function clock(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min ${s} s` : m ? `${m} min ${s} s` : `${s} s`;
}

// Times as UTC, the zone named (the audit log and the server speak UTC).
function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

// --- views and the URL --------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.view === name));
  for (const view of ["keys", "namespaces", "audit"]) $(`view-${view}`).hidden = view !== name;
  if (name === "namespaces") listNamespaces();
  setHash(name === "keys" ? { key: open.key, ns: browse.namespace } : { view: name });
}

function parseHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { key: params.get("key") || "", view: params.get("view") || "", ns: params.get("ns") || "" };
}

// The hash names the view or the open key (and the namespace shown), so a link or a reload lands there.
function setHash({ key = null, view = null, ns = "" }) {
  const params = new URLSearchParams();
  if (key) params.set("key", key);
  else if (view && view !== "keys") params.set("view", view);
  if (ns && !view) params.set("ns", ns);
  const hash = [...params].length ? "#" + params.toString().replace(/%2F/g, "/") : "";
  if (hash === location.hash) return;
  window.history.replaceState(null, "", location.pathname + location.search + hash);
  route = parseHash();
}

async function followRoute(target) {
  const view = ["namespaces", "audit"].includes(target.view) && session.admin ? target.view : "keys";
  if (view === "keys") {
    const ns = target.ns || (target.key ? parentOf(target.key) : "");
    if (ns !== browse.namespace || !browse.total) {
      browse.namespace = ns;
      $("namespace").value = ns;
      browse.cursors = [null];
      await loadPage(0);
    }
  }
  showView(view);
  if (view === "keys" && target.key && target.key !== open.key) await openKey(target.key, { keepMessage: true });
  if (view === "keys" && target.key) setHash({ key: target.key, ns: browse.namespace });
}

function parentOf(key) {
  const cut = Math.max(key.lastIndexOf("."), key.lastIndexOf("/"));
  return cut > 0 ? key.slice(0, cut) : "";
}

// --- the key list ---------------------------------------------------------------------------------

function inNamespace(key) {
  const ns = browse.namespace;
  if (browse.q && !key.toLowerCase().includes(browse.q.toLowerCase())) return false;
  return !ns || key.startsWith(ns + ".") || key.startsWith(ns + "/");
}

function asEntry(item) {
  return typeof item === "string" ? { key: item, version: null, lastModified: null, ttl: null, expiresAt: null } : item;
}

async function loadPage(page) {
  const cursor = browse.cursors[page];
  const data = await attempt(() => api("GET", "/keys", {
    params: { namespace: browse.namespace, q: browse.q, detail: "true", limit: PAGE_SIZE, cursor },
  }));
  if (!data) return;
  browse.page = page;
  browse.keys = data.keys.map(asEntry);
  browse.total = data.total;
  browse.next = data.next || null;
  browse.cursors[page + 1] = browse.next;
  renderList();
}

function browseTo(namespace) {
  browse.namespace = namespace;
  $("namespace").value = namespace;
  browse.cursors = [null];
  if (!open.key) setHash({ ns: namespace });
  return loadPage(0);
}

// Search on the server (the whole namespace, not this page), a moment after the last keystroke.
function onSearchInput() {
  clearTimeout(browse.timer);
  browse.timer = setTimeout(() => {
    const q = $("filter").value.trim();
    if (q === browse.q) return;
    browse.q = q;
    browse.cursors = [null];
    loadPage(0);
  }, SEARCH_DELAY_MS);
}

const SORTS = {
  name: (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  version: (a, b) => (b.version || 0) - (a.version || 0),
  modified: (a, b) => Date.parse(b.lastModified || 0) - Date.parse(a.lastModified || 0),
  // The soonest to expire first; keys without a TTL last.
  ttl: (a, b) => (a.expiresAt ? Date.parse(a.expiresAt) : Infinity) - (b.expiresAt ? Date.parse(b.expiresAt) : Infinity),
};

function sortedKeys() {
  const order = SORTS[browse.sort] || SORTS.name;
  return [...browse.keys].sort((a, b) => order(a, b) || SORTS.name(a, b));
}

function keyMeta(entry) {
  const parts = [];
  if (entry.version) parts.push(`v${entry.version}`);
  if (entry.lastModified) parts.push(formatTime(entry.lastModified).slice(0, 16) + " UTC");
  if (entry.ttl) parts.push(`TTL ${entry.ttl} s`);
  return parts.join(" · ");
}

function renderList() {
  const list = $("key-list");
  list.replaceChildren();
  for (const entry of sortedKeys()) {
    const key = entry.key;
    const item = document.createElement("li");
    item.dataset.key = key;
    // The columns are the item's data-meta, drawn by CSS: the item's text and its button's name stay the key.
    item.dataset.meta = keyMeta(entry);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = key;
    if (entry.version) button.title = `${key}: ${keyMeta(entry)}`;
    if (key === open.key) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openKey(key, { reveal: true }));
    item.append(button);
    list.append(item);
  }
  for (const button of $("sort").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.sort === browse.sort));
  }
  renderFolders();
  const where = browse.namespace ? ` in ${browse.namespace}` : "";
  const total = browse.total;
  let count = "";
  if (typeof total === "number") {
    count = browse.q ? `${total} match “${browse.q}”${where}` : `${total} key${total === 1 ? "" : "s"}${where}`;
  }
  $("total").textContent = [count, `page ${browse.page + 1}`].filter(Boolean).join(" · ");
  $("prev-page").disabled = browse.page === 0;
  $("next-page").disabled = !browse.next;
}

// The namespace path as breadcrumbs, and the folders (next path segments) among the keys of this page.
function renderFolders() {
  const ns = browse.namespace;
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  const path = [""];
  if (ns) {
    for (let at = 0; at < ns.length; at++) if (ns[at] === "." || ns[at] === "/") path.push(ns.slice(0, at));
    path.push(ns);
  }
  path.forEach((prefix, i) => {
    const last = i === path.length - 1;
    const el = document.createElement(last ? "span" : "button");
    el.textContent = prefix || "All keys";
    if (last) el.setAttribute("aria-current", "page");
    else {
      el.type = "button";
      el.addEventListener("click", () => browseTo(prefix));
    }
    if (i) crumbs.append(" › ");
    crumbs.append(el);
  });
  const folders = new Map();
  for (const { key } of browse.keys) {
    const rest = ns ? key.slice(ns.length + 1) : key;
    const match = /[./]/.exec(rest);
    if (!match) continue;
    const folder = (ns ? key.slice(0, ns.length + 1) : "") + rest.slice(0, match.index);
    folders.set(folder, (folders.get(folder) || 0) + 1);
  }
  const list = $("folders");
  list.replaceChildren();
  for (const [folder, n] of [...folders].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = folder;
    button.title = `${n} key${n === 1 ? "" : "s"} on this page`;
    button.addEventListener("click", () => browseTo(folder));
    item.append(button);
    list.append(item);
  }
}

function listAdd(key, event) {
  if (!inNamespace(key)) return;
  const known = browse.keys.find((entry) => entry.key === key);
  if (known) {
    if (event) Object.assign(known, { version: event.version, lastModified: event.lastModified || known.lastModified });
    renderList();
    return;
  }
  const last = sortedByName()[browse.keys.length - 1];
  // Only where it belongs on this page: a key past a full page's end shows up on a later page.
  if (browse.next && last !== undefined && key > last.key) return;
  browse.keys.push({ key, version: event ? event.version : null, lastModified: event ? event.lastModified : null,
    ttl: null, expiresAt: null });
  if (typeof browse.total === "number") browse.total += 1;
  renderList();
  flash(key);
}

function sortedByName() {
  return [...browse.keys].sort(SORTS.name);
}

function listRemove(key) {
  const at = browse.keys.findIndex((entry) => entry.key === key);
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

async function openKey(key, { keepMessage = false, reveal = false } = {}) {
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
  Object.assign(open, { key, data, gone: null, editing: false, baseVersion: null, remote: null, conflictVersion: null });
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

function may(action) {
  const access = open.data && open.data.access;
  if (!access) return true;  // the server does not say: offer it, and let it decide
  return !!access[action];
}

function renderKey() {
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

function describeAccess(d) {
  if (!d.access) return session.admin ? "admin: you may do everything" : "not told by the server";
  if (d.access.admin) return "You may read and change this key, and its ACL (admin).";
  return d.access.write ? "You may read and change this key." : "You may read this key, not change it.";
}

function aclText(acls) {
  const list = (entries) => (entries.length ? entries.join(", ") : "nobody");
  return `read: ${list(acls.read)} · write: ${list(acls.write)}`;
}

// The key's own ACL. Only admins are told its entries (include=acls); others learn from `governedBy`
// whether it has one.
function describeAcls(d) {
  if ("acls" in d) return d.acls === null ? "none of its own" : aclText(d.acls); // "Governed by" says which applies
  const source = d.governedBy && d.governedBy.source;
  if (source === "key") return "its own ACL (only admins see its entries)";
  if (source === "namespace" || source === "none") return "none of its own";
  return "only admins are shown it";
}

function describeGoverning(d) {
  const g = d.governedBy;
  if (!g) return "acls" in d && d.acls ? "its own ACL" : "not told by the server";
  if (g.source === "key") return g.acls ? `its own ACL: ${aclText(g.acls)}` : "its own ACL";
  if (g.source === "namespace") return `the namespace ${g.namespace}: ${g.acls ? aclText(g.acls) : "(entries not shown)"}`;
  return "no ACL anywhere above it: only its creator and admins may use it";
}

// Who may read, in words, from the governing ACL's read entries (admins always may).
function describeReaders(d) {
  const g = d.governedBy;
  let acls = g ? g.acls : null;
  if (!g && "acls" in d && d.acls) acls = d.acls;
  if (g && g.source === "none") return "its creator and admins";
  if (!acls) return g || "acls" in d ? "only admins are shown who" : "not told by the server";
  const who = acls.read.map((entry) =>
    entry === "*" ? "anyone signed in" : entry.endsWith("*") ? `anyone matching ${entry}` : entry);
  if (!who.length) return "admins only";
  return `${who.join(", ")}, and admins`;
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
    $("key-ttl").textContent = left ? `${d.ttl} s, expires in ${clock(left)}` : `${d.ttl} s, expiring now`;
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
  $("delete-cancel").hidden = true;
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

function cell(label, content, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (className) td.className = className;
  if (typeof content === "string") td.textContent = content;
  else td.append(...content);
  return td;
}

function historyRow(v) {
  const row = document.createElement("tr");
  row.dataset.version = String(v.version);
  row.append(cell("Version", String(v.version)), cell("Event", v.event),
    cell("Value", v.event === "update" ? valueView(v.value, `v${v.version}`, `${open.key}.v${v.version}.json`) : "—", "json"),
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
// and "Download", so one big version cannot stretch the table.
function valueView(value, label, filename) {
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
  save.addEventListener("click", () => download(filename.replace(/[^A-Za-z0-9._-]/g, "_"), pretty(value) + "\n"));
  const buttons = document.createElement("span");
  buttons.className = "row inline";
  buttons.append(toggle, save);
  return [short, size, full, buttons];
}

// --- diffs ----------------------------------------------------------------------------------------

// Line diff of two texts (longest common subsequence, after trimming the common start and end): a list of
// [" "|"-"|"+", line].
function diffLines(before, after) {
  const a = before.split("\n"), b = after.split("\n");
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const midA = a.slice(start, endA), midB = b.slice(start, endB);
  const middle = [];
  if (midA.length * midB.length > DIFF_MAX_CELLS) {
    for (const line of midA) middle.push(["-", line]);
    for (const line of midB) middle.push(["+", line]);
  } else {
    const n = midA.length, m = midB.length;
    const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i][j] = midA[i] === midB[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && midA[i] === midB[j]) { middle.push([" ", midA[i]]); i++; j++; }
      else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) { middle.push(["-", midA[i]]); i++; }  // removals first
      else { middle.push(["+", midB[j]]); j++; }
    }
  }
  return [...a.slice(0, start).map((l) => [" ", l]), ...middle, ...a.slice(endA).map((l) => [" ", l])];
}

// The diff into `pre`: changed lines and DIFF_CONTEXT lines around them; the rest folded into one line.
function renderDiff(pre, before, after) {
  const lines = diffLines(before, after);
  const near = new Uint8Array(lines.length);
  lines.forEach(([mark], i) => {
    if (mark === " ") return;
    for (let k = Math.max(0, i - DIFF_CONTEXT); k <= Math.min(lines.length - 1, i + DIFF_CONTEXT); k++) near[k] = 1;
  });
  pre.replaceChildren();
  let skipped = 0;
  const fold = () => {
    if (!skipped) return;
    const span = document.createElement("span");
    span.className = "skip";
    span.textContent = `  … ${skipped} unchanged line${skipped === 1 ? "" : "s"}\n`;
    pre.append(span);
    skipped = 0;
  };
  lines.forEach(([mark, line], i) => {
    if (!near[i]) { skipped++; return; }
    fold();
    const span = document.createElement("span");
    span.className = mark === "+" ? "add" : mark === "-" ? "del" : "same";
    span.textContent = `${mark} ${line}\n`;
    pre.append(span);
  });
  fold();
  if (!lines.some(([mark]) => mark !== " ")) pre.textContent = "No difference: the two values are equal.";
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

function hideRollback() {
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
  // A new key starts from nothing: no value, TTL or ACL carried over from the last one made.
  $("create-key").value = browse.namespace ? browse.namespace + "." : "";
  for (const id of ["create-value", "create-ttl", "create-read", "create-write"]) $(id).value = "";
  checkJson("create-value");
  $("create-check").textContent = "";
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

// Every namespace with an ACL (GET /namespaces), each one click from the form.
async function listNamespaces() {
  if (!session.admin) return;
  const data = await attempt(() => api("GET", "/namespaces"));
  if (!data) return;
  const rows = data.namespaces.map((n) => {
    const row = document.createElement("tr");
    row.dataset.namespace = n.namespace;
    const edit = document.createElement("button");
    edit.type = "button";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", `Edit the ACL of ${n.namespace}`);
    edit.addEventListener("click", () => {
      $("ns-name").value = n.namespace;
      loadNamespace();
      $("ns-read").focus();
    });
    row.append(cell("Namespace", n.namespace), cell("Read", n.acls.read.join(", ") || "nobody"),
      cell("Write", n.acls.write.join(", ") || "nobody"), cell("Changed by", n.updatedBy || ""),
      cell("At", formatTime(n.updatedAt)), cell("", [edit], "action"));
    return row;
  });
  $("ns-rows").replaceChildren(...rows);
  $("ns-none").hidden = rows.length > 0;
}

// The form shows the namespace's ACL as the server has it. A load never overwrites what the user typed
// while it was on its way.
async function loadNamespace() {
  const ns = $("ns-name").value.trim();
  if (!ns) return;
  if (namespaces.loading && namespaces.loading.ns === ns) return namespaces.loading.promise;
  clearMessage();
  $("ns-delete-box").hidden = true;
  const typed = [$("ns-read").value, $("ns-write").value];
  const promise = (async () => {
    let acls = null;
    try {
      acls = (await api("GET", "/namespaces/" + encodeURIComponent(ns))).acls;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) {
        showError(err);
        return;
      }
    }
    namespaces.current = acls;
    namespaces.loaded = ns;
    const untouched = $("ns-read").value === typed[0] && $("ns-write").value === typed[1];
    if (untouched) {
      $("ns-read").value = acls ? acls.read.join(", ") : "";
      $("ns-write").value = acls ? acls.write.join(", ") : "";
      $("ns-status").textContent = acls ? `${ns} has an ACL.` : `${ns} has no ACL of its own.`;
    } else {
      $("ns-status").textContent = acls
        ? `${ns} has an ACL (${aclText(acls)}); the form holds what you typed: Save replaces it.`
        : `${ns} has no ACL of its own.`;
    }
  })();
  namespaces.loading = { ns, promise };
  try {
    await promise;
  } finally {
    namespaces.loading = null;
  }
}

async function saveNamespace(event) {
  event.preventDefault();
  const ns = $("ns-name").value.trim();
  if (!ns) return;
  const acls = { read: entries($("ns-read").value), write: entries($("ns-write").value) };
  if (namespaces.loaded !== ns || namespaces.loading) {
    // Never replace an ACL the user has not seen: load it first; with none, there is nothing unseen to replace.
    const typed = [$("ns-read").value, $("ns-write").value];
    await loadNamespace();
    if (namespaces.loaded !== ns) return;
    if (namespaces.current && $("ns-read").value === typed[0] && $("ns-write").value === typed[1] &&
        aclText(namespaces.current) !== aclText(acls)) {
      $("ns-status").textContent = `${ns} has an ACL (${aclText(namespaces.current)}), not replaced: the form holds ` +
        "yours. Save again to replace it.";
      return;
    }
  }
  if (!acls.read.length && !acls.write.length && !window.confirm(`Nobody but admins could use keys under ${ns}. Save?`)) return;
  const ok = await attempt(() => api("PUT", "/namespaces/" + encodeURIComponent(ns), { body: { acls } }));
  if (ok === undefined) return;
  namespaces.current = acls;
  $("ns-status").textContent = `Saved the ACL of ${ns}.`;
  listNamespaces();
}

function askDeleteNamespace() {
  const ns = $("ns-name").value.trim();
  if (!ns) return;
  $("ns-delete-text").textContent = `Really remove the ACL of ${ns}? Its keys without an ACL of their own then follow ` +
    "the nearest namespace ACL above it, or, with none, only their creator and admins may use them.";
  $("ns-delete-box").hidden = false;
  $("ns-delete-cancel").focus();
}

async function deleteNamespace() {
  const ns = $("ns-name").value.trim();
  $("ns-delete-box").hidden = true;
  if (!ns) return;
  clearMessage();
  try {
    await api("DELETE", "/namespaces/" + encodeURIComponent(ns));
    $("ns-status").textContent = `Removed the ACL of ${ns}.`;
    $("ns-read").value = "";
    $("ns-write").value = "";
    namespaces.current = null;
    namespaces.loaded = ns;
    listNamespaces();
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
  if (event.event === "update") listAdd(event.key, event);
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

// Esc cancels what is open (a confirmation, an edit, the new-key or ACL form); Ctrl/⌘+S saves the draft.
function onKey(event) {
  if (!session.token) return;
  if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "s") {
    event.preventDefault();  // never the browser's "save page"
    if (open.editing && !$("save").disabled) save(null);
    else if (!$("create").hidden && !$("create-submit").disabled) $("create").requestSubmit();
    else if (!$("acl-form").hidden) $("acl-form").requestSubmit();
    return;
  }
  if (event.key !== "Escape") return;
  if (!$("rollback-confirm").hidden) hideRollback();
  else if (!$("delete-confirm").hidden) $("delete-cancel").click();
  else if (!$("ns-delete-box").hidden) $("ns-delete-cancel").click();
  else if (open.editing) cancelEdit();
  else if (!$("acl-form").hidden) $("acl-form").hidden = true;
  else if (!$("create").hidden) closeKey();
  else return;
  event.preventDefault();
}

function wire() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("browse").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(browse.timer);
    browse.q = $("filter").value.trim();
    browseTo($("namespace").value.trim());
  });
  $("filter").addEventListener("input", onSearchInput);
  for (const button of $("sort").querySelectorAll("button")) {
    button.addEventListener("click", () => { browse.sort = button.dataset.sort; renderList(); });
  }
  $("back-to-list").addEventListener("click", () => {
    const item = open.key && [...$("key-list").children].find((li) => li.dataset.key === open.key);
    (item ? item.querySelector("button") : $("filter")).focus();
  });
  $("copy").addEventListener("click", copyValue);
  $("download-value").addEventListener("click", () =>
    download(`${open.key.replace(/[^A-Za-z0-9._-]/g, "_")}.json`, pretty(open.data.value) + "\n"));
  $("draft").addEventListener("input", () => checkJson("draft"));
  $("create-value").addEventListener("input", () => checkJson("create-value"));
  $("diff-form").addEventListener("submit", compareVersions);
  $("rollback-now").addEventListener("click", () => { if (history.rollback !== null) rollback(history.rollback); });
  $("rollback-cancel").addEventListener("click", hideRollback);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => {
    const target = parseHash();
    route = target;
    if (session.token && !session.expired) followRoute(target);
  });
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
  $("ns-delete").addEventListener("click", askDeleteNamespace);
  $("ns-delete-confirm").addEventListener("click", deleteNamespace);
  $("ns-delete-cancel").addEventListener("click", () => { $("ns-delete-box").hidden = true; $("ns-delete").focus(); });
  $("ns-name").addEventListener("change", loadNamespace);
  $("ns-name").addEventListener("keydown", (e) => {
    // Enter in the name loads its ACL: it never saves one the user has not seen.
    if (e.key === "Enter") { e.preventDefault(); loadNamespace(); }
  });
  $("audit-form").addEventListener("submit", (e) => searchAudit(e));
  $("audit-more").addEventListener("click", () => searchAudit(null, true));
  $("audit-verify").addEventListener("click", verifyChain);
  setInterval(() => { tickTtl(); tickSession(); }, 1000);
  $("token").focus();
}

wire();
