// The key list: one page of keys at a time, found on the server by namespace and search text (a name
// part, or a prefix ending in *), in the order the server sorts the whole namespace in, shown with
// breadcrumbs and folders, and kept current by live changes.

import { api } from "./api.js";
import { $, formatTime, plural } from "./dom.js";
import { open, openKey } from "./key-view.js";
import { attempt } from "./messages.js";
import { setHash } from "./routing.js";

const PAGE_SIZE = 50;
const SEARCH_DELAY_MS = 250;

// One page of {key, version, lastModified, ttl, expiresAt}, found by namespace and search text `q`.
export const browse = { namespace: "", q: "", cursors: [null], page: 0, keys: [], total: null, next: null, sort: "name", timer: null };

export function parentOf(key) {
  const cut = Math.max(key.lastIndexOf("."), key.lastIndexOf("/"));
  return cut > 0 ? key.slice(0, cut) : "";
}

// The search box's text as the server takes it: a prefix when it ends in *, else text in the name.
function searchParams() {
  const q = browse.q;
  if (!q) return {};
  return q.endsWith("*") ? { prefix: q.slice(0, -1) } : { q };
}

function inNamespace(key) {
  const ns = browse.namespace;
  const { prefix, q } = searchParams();
  if (prefix !== undefined && !key.startsWith(prefix)) return false;
  if (q && !key.toLowerCase().includes(q.toLowerCase())) return false;
  return !ns || key.startsWith(ns + ".") || key.startsWith(ns + "/");
}

function asEntry(item) {
  return typeof item === "string" ? { key: item, version: null, lastModified: null, ttl: null, expiresAt: null } : item;
}

async function loadPage(page) {
  const cursor = browse.cursors[page];
  const data = await attempt(() => api("GET", "/keys", {
    params: {
      namespace: browse.namespace, ...searchParams(), sort: SORTS[browse.sort].server, detail: "true", limit: PAGE_SIZE,
      cursor,
    },
  }));
  if (!data) return;
  browse.page = page;
  browse.keys = data.keys.map(asEntry);
  browse.total = data.total;
  browse.next = data.next || null;
  browse.cursors[page + 1] = browse.next;
  renderList();
}

// The page shown, as the server has it now.
export function reloadPage() {
  return loadPage(browse.page);
}

function firstPage() {
  browse.cursors = [null];
  return loadPage(0);
}

// The first page of `namespace`.
export function browseFrom(namespace) {
  browse.namespace = namespace;
  $("namespace").value = namespace;
  return firstPage();
}

// The first page of `namespace`, chosen by the user (the URL follows unless a key is open).
function browseTo(namespace) {
  if (!open.key) setHash({ ns: namespace });
  return browseFrom(namespace);
}

// Search on the server (the whole namespace, not this page), a moment after the last keystroke.
function onSearchInput() {
  clearTimeout(browse.timer);
  browse.timer = setTimeout(() => {
    const q = $("filter").value.trim();
    if (q === browse.q) return;
    browse.q = q;
    firstPage();
  }, SEARCH_DELAY_MS);
}

const byName = (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
// Each order as the server sorts the whole namespace (`sort`), and the same order on the page (for
// keys that arrive live): ties by name, in the same direction (the server's keyset is (column, key)).
const SORTS = {
  name: { server: "name", compare: byName },
  version: { server: "-version", compare: (a, b) => (b.version || 0) - (a.version || 0) || byName(b, a) },
  modified: {
    server: "-lastModified",
    compare: (a, b) => Date.parse(b.lastModified || 0) - Date.parse(a.lastModified || 0) || byName(b, a),
  },
  // The soonest to expire first; keys without a TTL last.
  ttl: {
    server: "expiresAt",
    compare: (a, b) =>
      (a.expiresAt ? Date.parse(a.expiresAt) : Infinity) - (b.expiresAt ? Date.parse(b.expiresAt) : Infinity) ||
      byName(a, b),
  },
};

function sortedKeys() {
  return [...browse.keys].sort((SORTS[browse.sort] || SORTS.name).compare);
}

function keyMeta(entry) {
  const parts = [];
  if (entry.version) parts.push(`v${entry.version}`);
  if (entry.lastModified) parts.push(formatTime(entry.lastModified).slice(0, 16) + " UTC");
  if (entry.ttl) parts.push(`TTL ${entry.ttl} s`);
  return parts.join(" · ");
}

export function renderList() {
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
    count = browse.q ? `${total} match “${browse.q}”${where}` : `${plural(total, "key")}${where}`;
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
    button.title = `${plural(n, "key")} on this page`;
    button.addEventListener("click", () => browseTo(folder));
    item.append(button);
    list.append(item);
  }
}

// A key written (by this page, or live from /watch with its `event`): updated in place, or added where it
// belongs on this page.
export function listAdd(key, event) {
  if (!inNamespace(key)) return;
  const known = browse.keys.find((entry) => entry.key === key);
  if (known) {
    if (event) Object.assign(known, { version: event.version, lastModified: event.lastModified || known.lastModified });
    renderList();
    return;
  }
  const last = sortedKeys()[browse.keys.length - 1];
  const entry = { key, version: event ? event.version : null, lastModified: event ? event.lastModified : null,
    ttl: null, expiresAt: null };
  // Only where it belongs on this page: a key past a full page's end shows up on a later page.
  if (browse.next && last !== undefined && SORTS[browse.sort].compare(entry, last) > 0) return;
  browse.keys.push(entry);
  if (typeof browse.total === "number") browse.total += 1;
  renderList();
  flash(key);
}

export function listRemove(key) {
  const at = browse.keys.findIndex((entry) => entry.key === key);
  if (at < 0) return;
  browse.keys.splice(at, 1);
  if (typeof browse.total === "number") browse.total -= 1;
  renderList();
}

export function flash(key) {
  const item = [...$("key-list").children].find((li) => li.dataset.key === key);
  if (!item) return;
  item.classList.add("flash");
  setTimeout(() => item.classList.remove("flash"), 1500);
}

// Signed out: no key of this user's stays on the page.
export function forgetKeys() {
  browse.keys = [];
  browse.total = null;
  $("key-list").replaceChildren();
  $("folders").replaceChildren();
  $("crumbs").replaceChildren();
  $("total").textContent = "";
  $("filter").value = "";
}

export function wireKeyList() {
  $("browse").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(browse.timer);
    browse.q = $("filter").value.trim();
    browseTo($("namespace").value.trim());
  });
  $("filter").addEventListener("input", onSearchInput);
  for (const button of $("sort").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      browse.sort = button.dataset.sort;
      firstPage(); // the server sorts the whole namespace: back to its first page
    });
  }
  $("back-to-list").addEventListener("click", () => {
    const item = open.key && [...$("key-list").children].find((li) => li.dataset.key === open.key);
    (item ? item.querySelector("button") : $("filter")).focus();
  });
  $("prev-page").addEventListener("click", () => loadPage(Math.max(0, browse.page - 1)));
  $("next-page").addEventListener("click", () => loadPage(browse.page + 1));
}
