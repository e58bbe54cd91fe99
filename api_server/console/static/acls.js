// ACLs in words (the key's own, the one that governs it, who may read it) and the key's ACL form.
// A namespace's ACL is edited in namespaces.js.

import { ApiError, api, keyPath } from "./api.js";
import { $ } from "./dom.js";
import { open, openKey } from "./key-view.js";
import { clearMessage, showError, showInfo } from "./messages.js";
import { session } from "./session.js";

// One list of an ACL in words: its entries, or "nobody" (besides admins).
export function aclList(entries) {
  return entries.length ? entries.join(", ") : "nobody";
}

export function aclText(acls) {
  return `read: ${aclList(acls.read)} · write: ${aclList(acls.write)}`;
}

function entries(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

// The ACL a pair of fields holds ("alice, team-*"), and an ACL shown in them (null: empty fields).
export function readAclFields(readId, writeId) {
  return { read: entries($(readId).value), write: entries($(writeId).value) };
}

export function showAclFields(readId, writeId, acls) {
  $(readId).value = acls ? acls.read.join(", ") : "";
  $(writeId).value = acls ? acls.write.join(", ") : "";
}

export function describeAccess(d) {
  if (!d.access) return session.admin ? "admin: you may do everything" : "not told by the server";
  if (d.access.admin) return "You may read and change this key, and its ACL (admin).";
  return d.access.write ? "You may read and change this key." : "You may read this key, not change it.";
}

// The key's own ACL. Only admins are told its entries (include=acls); others learn from `governedBy`
// whether it has one.
export function describeAcls(d) {
  if ("acls" in d) return d.acls === null ? "none of its own" : aclText(d.acls); // "Governed by" says which applies
  const source = d.governedBy && d.governedBy.source;
  if (source === "key") return "its own ACL (only admins see its entries)";
  if (source === "namespace" || source === "none") return "none of its own";
  return "only admins are shown it";
}

export function describeGoverning(d) {
  const g = d.governedBy;
  if (!g) return "acls" in d && d.acls ? "its own ACL" : "not told by the server";
  if (g.source === "key") return g.acls ? `its own ACL: ${aclText(g.acls)}` : "its own ACL";
  if (g.source === "namespace") return `the namespace ${g.namespace}: ${g.acls ? aclText(g.acls) : "(entries not shown)"}`;
  return "no ACL anywhere above it: only its creator and admins may use it";
}

// Who may read, in words, from the governing ACL's read entries (admins always may).
export function describeReaders(d) {
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

function editAcl() {
  showAclFields("acl-read", "acl-write", open.data.acls);
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

export function wireKeyAcl() {
  $("acl-edit").addEventListener("click", editAcl);
  $("acl-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveAcl(readAclFields("acl-read", "acl-write"));
  });
  $("acl-inherit").addEventListener("click", () => saveAcl(null));
  $("acl-cancel").addEventListener("click", () => { $("acl-form").hidden = true; });
}
