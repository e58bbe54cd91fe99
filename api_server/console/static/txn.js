// One transaction (POST /txn), as the staged changes and an import both send it: its body, its parts as
// list items, sending it, and why the server refused it.

import { ApiError, api, errorText, readKey } from "./api.js";
import { reloadPage } from "./key-list.js";
import { closeKey, open, openKey } from "./key-view.js";

export const TXN_MAX_OPS = 128;  // POST /txn takes 1–128 ops
const PREVIEW_CHARS = 80;

export function preview(value) {
  const text = JSON.stringify(value);
  return text.length > PREVIEW_CHARS ? text.slice(0, PREVIEW_CHARS - 1) + "…" : text;
}

export function condition(compare) {
  if (!compare) return "";
  return compare.exists === false ? "if it does not exist" : `if still version ${compare.version}`;
}

function checkText(compare) {
  if ("exists" in compare) return `${compare.key} ${compare.exists ? "exists" : "does not exist"}`;
  return `${compare.key} is at version ${compare.version}`;
}

// One change of a transaction as a list item: what it does, to which key, on which condition, and why it failed.
export function opItem(entry, tag, remove) {
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

function txnBody(entries) {
  const body = { ops: entries.map((entry) => entry.op) };
  const compare = entries.map((entry) => entry.compare).filter(Boolean);
  if (compare.length) body.compare = compare;
  return body;
}

// `entries` ({key, op, compare, error}) as one POST /txn, `button` disabled meanwhile: {body, answer}, or
// {body, err, failure} when refused, the failing entry's `error` set (`nothing` opens the failure's text).
export async function sendTxn(entries, button, nothing) {
  for (const entry of entries) entry.error = null;
  const body = txnBody(entries);
  button.disabled = true;
  try {
    return { body, answer: await api("POST", "/txn", { body }) };
  } catch (err) {
    const failure = await explainTxnFailure(err, body, nothing);
    const culprit = failure.key && entries.find((entry) => entry.key === failure.key);
    if (culprit) culprit.error = failure.reason;
    return { body, err, failure };
  } finally {
    button.disabled = false;
  }
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
    const now = await readKey(key);
    return now ? ` It is at version ${now.version} now.` : " It does not exist now.";
  } catch {
    return "";
  }
}

// After a transaction: the list and the open key as the server has them now (the live frame follows too).
export async function refreshAfterTxn(body) {
  await reloadPage();
  const mine = body.ops.find((op) => op.key === open.key);
  if (!mine || open.editing) return;
  if (mine.op === "delete") closeKey();
  else await openKey(open.key, { keepMessage: true });
}
