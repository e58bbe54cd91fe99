// DynConfig console. Plain ES modules, no build step, no third-party code; this one wires the others.
//
// The token the operator pastes lives in `session.token` (memory only: never localStorage, cookies or
// the URL; session.js). Every call goes through `api()` (api.js) to the same HTTP API as any client, and
// live updates come from the same /watch WebSocket (watch.js), so the console can never show more than its
// user may see. Text reaches the page only through textContent (never innerHTML; dom.js), so stored values
// cannot inject markup. The page's Content-Security-Policy admits scripts from this origin only, so every
// module is a file beside this one (`import … from "./x.js"`), none inline.
//
//   session.js  sign-in, renewal, expiry, sign-out     api.js, messages.js  HTTP calls, the message box
//   routing.js  views and the URL's hash               watch.js             live updates
//   key-list.js the keys, folders, search, paging      key-view.js          the open key
//   acls.js     ACLs in words, the key's ACL form      editor.js            the JSON editor, new keys
//   history.js  versions, compare, rollback            diff.js              line diffs
//   staged.js   staged changes                         txn.js               one transaction
//   import-export.js  JSON files in and out            namespaces.js, audit.js  the admin views
//   dom.js      text-only DOM helpers and formats
//
// The modules call one another both ways (the open key redraws the list, the list opens a key): an ES
// module cycle is safe while a module's top level only declares, so keep work out of it (dom.js aside);
// this module starts everything once all are loaded.

import { wireKeyAcl } from "./acls.js";
import { wireAudit } from "./audit.js";
import { $ } from "./dom.js";
import { cancelEdit, save, wireEditor } from "./editor.js";
import { hideRollback, wireHistory } from "./history.js";
import { wireImportExport } from "./import-export.js";
import { wireKeyList } from "./key-list.js";
import { closeKey, open, tickTtl, wireKeyView } from "./key-view.js";
import { wireNamespaces } from "./namespaces.js";
import { wireRouting } from "./routing.js";
import { session, tickSession, wireSession } from "./session.js";
import { wireStaged } from "./staged.js";

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
  wireSession();
  wireRouting();
  wireKeyList();
  wireKeyView();
  wireKeyAcl();
  wireEditor();
  wireHistory();
  wireStaged();
  wireImportExport();
  wireNamespaces();
  wireAudit();
  document.addEventListener("keydown", onKey);
  setInterval(() => { tickTtl(); tickSession(); }, 1000);
  $("token").focus();
}

wire();
