// Where the URL's hash points (#key=…, #view=…, &ns=…), so a link or a reload lands on the same view or key
// (the token is not kept: a reload asks for it again, then goes there).

import { $ } from "./dom.js";
import { browse, browseFrom, parentOf } from "./key-list.js";
import { open, openKey } from "./key-view.js";
import { listNamespaces } from "./namespaces.js";
import { session } from "./session.js";

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
export function setHash({ key = null, view = null, ns = "" }) {
  const params = new URLSearchParams();
  if (key) params.set("key", key);
  else if (view && view !== "keys") params.set("view", view);
  if (ns && !view) params.set("ns", ns);
  const hash = [...params].length ? "#" + params.toString().replace(/%2F/g, "/") : "";
  if (hash === location.hash) return;
  window.history.replaceState(null, "", location.pathname + location.search + hash);
}

// Where the hash points (as the page was loaded, followed or last set), once signed in.
export function followCurrentRoute() {
  return followRoute(parseHash());
}

async function followRoute(target) {
  const view = ["namespaces", "audit"].includes(target.view) && session.admin ? target.view : "keys";
  if (view === "keys") {
    const ns = target.ns || (target.key ? parentOf(target.key) : "");
    if (ns !== browse.namespace || !browse.total) await browseFrom(ns);
  }
  showView(view);
  if (view === "keys" && target.key && target.key !== open.key) await openKey(target.key, { keepMessage: true });
  if (view === "keys" && target.key) setHash({ key: target.key, ns: browse.namespace });
}

export function wireRouting() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  window.addEventListener("hashchange", () => {
    if (session.token && !session.expired) followRoute(parseHash());
  });
}
