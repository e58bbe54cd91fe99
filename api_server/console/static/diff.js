// Line diffs of two JSON texts, as the history's "Compare" and the rollback confirmation show them.

import { plural } from "./dom.js";

const DIFF_CONTEXT = 3;  // unchanged lines shown around each change
const DIFF_MAX_CELLS = 4_000_000;  // beyond this many line pairs, the changed middle is shown whole

// Line diff of two texts (longest common subsequence, after trimming the common start and end): a list of
// [" "|"-"|"+", line].
function diffLines(before, after) {
  const a = before.split("\n"), b = after.split("\n");
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const midA = a.slice(start, endA), midB = b.slice(start, endB);
  const middle = [];
  if (midA.length * midB.length > DIFF_MAX_CELLS) {
    for (const line of midA) middle.push(["-", line]);
    for (const line of midB) middle.push(["+", line]);
  } else {
    const n = midA.length, m = midB.length;
    const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i][j] = midA[i] === midB[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && midA[i] === midB[j]) { middle.push([" ", midA[i]]); i++; j++; }
      else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) { middle.push(["-", midA[i]]); i++; }  // removals first
      else { middle.push(["+", midB[j]]); j++; }
    }
  }
  return [...a.slice(0, start).map((l) => [" ", l]), ...middle, ...a.slice(endA).map((l) => [" ", l])];
}

// The diff into `pre`: changed lines and DIFF_CONTEXT lines around them; the rest folded into one line.
export function renderDiff(pre, before, after) {
  const lines = diffLines(before, after);
  const near = new Uint8Array(lines.length);
  lines.forEach(([mark], i) => {
    if (mark === " ") return;
    for (let k = Math.max(0, i - DIFF_CONTEXT); k <= Math.min(lines.length - 1, i + DIFF_CONTEXT); k++) near[k] = 1;
  });
  pre.replaceChildren();
  let skipped = 0;
  const fold = () => {
    if (!skipped) return;
    const span = document.createElement("span");
    span.className = "skip";
    span.textContent = `  … ${plural(skipped, "unchanged line")}\n`;
    pre.append(span);
    skipped = 0;
  };
  lines.forEach(([mark, line], i) => {
    if (!near[i]) { skipped++; return; }
    fold();
    const span = document.createElement("span");
    span.className = mark === "+" ? "add" : mark === "-" ? "del" : "same";
    span.textContent = `${mark} ${line}\n`;
    pre.append(span);
  });
  fold();
  if (!lines.some(([mark]) => mark !== " ")) pre.textContent = "No difference: the two values are equal.";
}
