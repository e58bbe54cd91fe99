// The HTTP API, as any client calls it: the token in memory (`session.token`), JSON both ways, and an
// error's status, reason and per-field problems kept for the message the operator reads.

import { expired, session } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    const phrase = (body && body.error) || `HTTP ${status}`;
    const message = (body && body.message) || "";
    super(message ? `${status} ${phrase}: ${message}` : `${status} ${phrase}`);
    this.status = status;
    this.body = body || {};
  }
}

export function keyPath(key) {
  return "/keys/" + key.split("/").map(encodeURIComponent).join("/");
}

export function nsPath(ns) {
  return "/namespaces/" + encodeURIComponent(ns);
}

// `verifying`: a token being tried at sign-in or renewal, whose 401 is its own answer, not the session's expiry.
export async function api(method, path, { body, ifMatch, params, verifying = false } = {}) {
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

// GET /keys/{key} as the server has it now, or null where there is no such key (a 404).
export async function readKey(key) {
  try {
    return await api("GET", keyPath(key));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

export function errorText(err) {
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
