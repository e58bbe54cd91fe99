// Namespace ACLs (admins): every namespace with one, and a form that never replaces an ACL its user has
// not seen.

import { ApiError, api, nsPath } from "./api.js";
import { aclList, aclText, readAclFields, showAclFields } from "./acls.js";
import { $, cell, formatTime } from "./dom.js";
import { attempt, clearMessage, showError } from "./messages.js";
import { session } from "./session.js";

// The namespace whose ACL the form shows (`current`: that ACL, null for none), and a load on its way.
const namespaces = { loaded: null, current: null, loading: null };

// Every namespace with an ACL (GET /namespaces), each one click from the form.
export async function listNamespaces() {
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
    row.append(cell("Namespace", n.namespace), cell("Read", aclList(n.acls.read)),
      cell("Write", aclList(n.acls.write)), cell("Changed by", n.updatedBy || ""),
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
      acls = (await api("GET", nsPath(ns))).acls;
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
      showAclFields("ns-read", "ns-write", acls);
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
  const acls = readAclFields("ns-read", "ns-write");
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
  const ok = await attempt(() => api("PUT", nsPath(ns), { body: { acls } }));
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
  const ok = await attempt(() => api("DELETE", nsPath(ns)));
  if (ok === undefined) return;
  $("ns-status").textContent = `Removed the ACL of ${ns}.`;
  showAclFields("ns-read", "ns-write", null);
  namespaces.current = null;
  namespaces.loaded = ns;
  listNamespaces();
}

// Signed out: no namespace of this user's stays on the page.
export function forgetNamespaces() {
  $("ns-rows").replaceChildren();
  for (const id of ["ns-name", "ns-read", "ns-write"]) $(id).value = "";
  $("ns-status").textContent = "";
  namespaces.loaded = null;
}

export function wireNamespaces() {
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
}
