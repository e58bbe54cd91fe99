// Live updates from the same /watch WebSocket as any client: every change the user may read, resumed from
// the last revision seen after a drop or a token renewal, so nothing is missed.

import { $ } from "./dom.js";
import { showConflict, renderRemote } from "./editor.js";
import { flash, listAdd, listRemove, reloadPage } from "./key-list.js";
import { open, openKey, renderKey } from "./key-view.js";
import { showError } from "./messages.js";
import { session, expired } from "./session.js";
import { noteStagedChange } from "./staged.js";

const RECONNECT_MAX_MS = 15000;

const live = { ws: null, revision: null, attempt: 0, timer: null, wanted: false };

export function setLive(state, text, title = "") {
  const el = $("live");
  el.className = `live ${state}`;
  el.textContent = text;
  el.title = title;
}

function watchUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/watch`;
}

export function connect() {
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

// A fresh token for the same user: the open socket is sent it; one closed at expiry opens again from the
// last revision seen, nothing missed.
export function renewWatch(token) {
  const ws = live.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ token }));
  else connect();
}

// No more live updates (signed out, or the token expired); `forget` also drops where they had got to.
export function stopWatching(reason, { forget = false } = {}) {
  live.wanted = false;
  const ws = live.ws;
  live.ws = null;
  if (ws) ws.close(1000, reason);
  if (forget) {
    live.revision = null;
    live.attempt = 0;
  }
  clearTimeout(live.timer);
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
      reloadPage();
      if (open.key && !open.editing) openKey(open.key, { keepMessage: true });
      break;
    case "error":
      showError(new Error(`Live updates: ${msg.error}${msg.message ? ": " + msg.message : ""}`));
      break;
    default:
      break;
  }
}

// What the open key's view says once the server deleted or expired it.
function goneText(event) {
  return `${event.event === "expired" ? "Expired" : "Deleted"} on the server (version ${event.version}).`;
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
    open.gone = event.event === "update" ? null : goneText(event);
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
    open.gone = goneText(event);
    renderKey();
  }
}
