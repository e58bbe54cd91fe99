// Building the page from data, text only: user data (key names, values, ACL entries, audit records) reaches
// the page through textContent and text nodes, never innerHTML, so a stored value cannot inject markup.

export const $ = (id) => document.getElementById(id);

// A table cell with the label the narrow (phone) layout shows beside it: text, or the nodes given.
export function cell(label, content, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (className) td.className = className;
  if (typeof content === "string") td.textContent = content;
  else td.append(...content);
  return td;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function clock(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min ${s} s` : m ? `${m} min ${s} s` : `${s} s`;
}

// Times as UTC, the zone named (the audit log and the server speak UTC).
export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

// `value` saved as `<stem>.json` (the stem made safe for a file name), pretty-printed; the name is returned.
export function downloadJson(stem, value) {
  const name = `${stem.replace(/[^A-Za-z0-9._-]/g, "_")}.json`;
  const url = URL.createObjectURL(new Blob([pretty(value) + "\n"], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return name;
}
