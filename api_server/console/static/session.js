// Who is signed in. The token the operator pastes lives in `session.token`, in memory only: never
// localStorage, cookies or the URL, so a reload signs out and nothing of it outlives the page.

import { ApiError, api } from "./api.js";
import { forgetAudit } from "./audit.js";
import { $, clock } from "./dom.js";
import { cancelImport } from "./import-export.js";
import { closeKey } from "./key-view.js";
import { forgetKeys } from "./key-list.js";
import { clearMessage, showError, showInfo } from "./messages.js";
import { forgetNamespaces } from "./namespaces.js";
import { followCurrentRoute } from "./routing.js";
import { forgetStaged } from "./staged.js";
import { connect, renewWatch, setLive, stopWatching } from "./watch.js";

const WARN_BEFORE_EXPIRY_S = 120;  // the token's renewal prompt opens this long before its `exp`

export const session = { token: null, username: null, exp: null, admin: false, expired: null };

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
    renewWatch(token);
    showInfo("Token renewed: you stay signed in, and the page is as you left it.");
    return;
  }
  $("app").hidden = false;
  $("signout").hidden = false;
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !session.admin;
  $("who").textContent = `${session.username}${session.admin ? " (admin)" : ""}`;
  await followCurrentRoute();
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
  stopWatching("signed out", { forget: true });
  // Nothing of this user's stays on the page for the next one.
  forgetKeys();
  forgetAudit();
  forgetNamespaces();
  forgetStaged();
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
export function expired(message) {
  if (!session.token || session.username === null || session.expired) return;
  session.expired = message || "the token is no longer valid";
  stopWatching("token expired");
  setLive("offline", "Offline", "Paste a fresh token to follow changes again");
  showSignIn(true, `Signed in as ${session.username} until the token expired. Paste a fresh token for ` +
    `${session.username}: this page, your draft and staged changes are kept, and live updates resume where they stopped.`);
  showError(new Error(`Signed out: ${session.expired}. Paste a fresh token above to go on.`));
  $("token").focus();
}

// Once a second: the renewal prompt from WARN_BEFORE_EXPIRY_S before the token's `exp` (the page knows it).
export function tickSession() {
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

export function wireSession() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
}
