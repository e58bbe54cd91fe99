// The one message box above the views: an error (in words, from errorText) or a piece of news.

import { errorText } from "./api.js";
import { $ } from "./dom.js";

export function showError(err) {
  const box = $("message");
  box.textContent = errorText(err);
  box.className = "message";
  box.hidden = false;
}

export function showInfo(text) {
  const box = $("message");
  box.textContent = text;
  box.className = "message info";
  box.hidden = false;
}

export function clearMessage() {
  $("message").hidden = true;
}

// `action`'s answer, or undefined once its error is shown.
export async function attempt(action) {
  clearMessage();
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  }
}
