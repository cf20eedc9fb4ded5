// Keyboard shortcuts as in A1111: in a prompt box, Ctrl+Enter generates, Alt+Enter skips the current
// image, Esc interrupts. The click goes to whichever of the tab's buttons is showing.
document.addEventListener("keydown", (event) => {
  const box = event.target.closest && event.target.closest(
    "#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt");
  if (!box) return;
  const tab = box.id.startsWith("txt2img") ? "txt2img" : "img2img";
  const click = (name) => {
    const button = document.getElementById(`${tab}_${name}`);
    if (button && button.offsetParent !== null) button.click();
  };
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    // Let the textbox hand its latest text to the page before the click reads it.
    box.querySelector("textarea")?.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => click("generate"), 50);
  } else if (event.key === "Enter" && event.altKey) {
    event.preventDefault();
    click("skip");
  } else if (event.key === "Escape") {
    click("interrupt");
  }
});

// Generate forever, as in A1111: right-click Generate and pick "Generate forever"; Generate is then clicked
// whenever it shows again (each time the tab's job has ended) until "Cancel generate forever", which the
// menus of Generate, Interrupt and Skip offer. Each tab repeats on its own, also while another tab is open.
// While on, the body carries the class sd-forever-TAB, which outlines the tab's buttons.
const sdForever = {};

// Whether the button is shown within its tab (the tab itself may be hidden: another one is open).
function sdShownInTab(button, tab) {
  for (let el = button; el && el.id !== `tab_${tab}`; el = el.parentElement) {
    if (getComputedStyle(el).display === "none") return false;
  }
  return true;
}

function sdForeverStart(tab) {
  sdForeverStop(tab);
  const tick = () => {
    const button = document.getElementById(`${tab}_generate`);
    if (button && sdShownInTab(button, tab)) button.click();
  };
  tick();
  sdForever[tab] = setInterval(tick, 500);
  document.body.classList.add(`sd-forever-${tab}`);
}

function sdForeverStop(tab) {
  clearInterval(sdForever[tab]);
  delete sdForever[tab];
  document.body.classList.remove(`sd-forever-${tab}`);
}

function sdCloseMenu() {
  document.getElementById("sd-context-menu")?.remove();
}

document.addEventListener("contextmenu", (event) => {
  const button = event.target.closest && event.target.closest(
    "#txt2img_generate, #img2img_generate, #txt2img_interrupt, #img2img_interrupt, #txt2img_skip, #img2img_skip");
  if (!button) return;
  event.preventDefault();
  sdCloseMenu();
  const tab = button.id.startsWith("txt2img") ? "txt2img" : "img2img";
  const items = [["Cancel generate forever", () => sdForeverStop(tab)]];
  if (button.id === `${tab}_generate`) items.unshift(["Generate forever", () => sdForeverStart(tab)]);
  const menu = document.createElement("ul");
  menu.id = "sd-context-menu";
  menu.setAttribute("role", "menu");
  menu.style.left = `${event.pageX}px`;
  menu.style.top = `${event.pageY}px`;
  for (const [label, action] of items) {
    const item = document.createElement("li");
    item.setAttribute("role", "menuitem");
    item.textContent = label;
    item.addEventListener("click", (e) => { e.stopPropagation(); sdCloseMenu(); action(); });
    menu.appendChild(item);
  }
  document.body.appendChild(menu);
});
// Only the user's clicks close it: Generate forever's own clicks on Generate (untrusted events) happen whenever a
// job ends, and closed the menu under the pointer of a user about to pick "Cancel generate forever".
document.addEventListener("click", (event) => { if (event.isTrusted) sdCloseMenu(); });
document.addEventListener("keydown", (event) => { if (event.key === "Escape") sdCloseMenu(); });

// The extra-network cards' Search box: cards whose caption (name, description) does not hold every word typed
// are hidden. Only hidden: the galleries keep their items and order, so a click on a shown card still names it.
// A gallery drawn again (Refresh, Save in Edit card) is filtered again.
function sdFilterCards(tab) {
  const box = document.querySelector(`#${tab}_extra_search textarea, #${tab}_extra_search input`);
  const panel = document.getElementById(`${tab}_extra_networks`);
  if (!box || !panel) return;
  const words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length && !panel.querySelector(".thumbnail-item[style*='none']")) return;  // nothing to do: the usual case
  for (const card of panel.querySelectorAll(".thumbnail-item")) {
    const text = (card.textContent + " " + (card.getAttribute("aria-label") || "")).toLowerCase();
    const shown = words.every((w) => text.includes(w));
    if (card.style.display !== (shown ? "" : "none")) card.style.display = shown ? "" : "none";
  }
}

document.addEventListener("input", (event) => {
  const box = event.target.closest && event.target.closest("#txt2img_extra_search, #img2img_extra_search");
  if (box) sdFilterCards(box.id.startsWith("txt2img") ? "txt2img" : "img2img");
});

new MutationObserver(() => { sdFilterCards("txt2img"); sdFilterCards("img2img"); })
  .observe(document.documentElement, { childList: true, subtree: true });

// The prompt box focused last in each tab ("prompt" or "negative"): a Textual Inversion card adds its embedding
// there, as in A1111 (how negative embeddings are added).
window.sdPromptFocus = {};
document.addEventListener("focusin", (event) => {
  const box = event.target.closest && event.target.closest(
    "#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt");
  if (!box) return;
  const [tab, which] = box.id.split("_");
  window.sdPromptFocus[tab] = which === "neg" ? "negative" : "prompt";
});

// The settings this script reads (PAGE_OPTIONS in ui/app.py), from the hidden element the server fills at each
// page load and after Apply settings; A1111's defaults until it is there.
const sdOptionDefaults = {
  keyedit_precision_attention: 0.1, keyedit_precision_extra: 0.05,
  keyedit_delimiters: ".,\\/!?%^*;:{}=`~() ", keyedit_delimiters_whitespace: ["Tab", "Carriage Return", "Line Feed"],
  keyedit_move: true,
};

function sdOption(name) {
  try {
    const data = JSON.parse(document.getElementById("sd-page-options")?.textContent || "{}");
    if (name in data) return data[name];
  } catch (e) { /* not there yet: the default */ }
  return sdOptionDefaults[name];
}

// The prompt boxes where the editing keys below work, as A1111's (the tabs' prompts, the hires pass's, the style
// editor's).
const SD_PROMPT_BOXES = ["txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt", "img2img_neg_prompt",
  "hires_prompt", "hires_neg_prompt", "txt2img_edit_style_prompt", "txt2img_edit_style_neg_prompt",
  "img2img_edit_style_prompt", "img2img_edit_style_neg_prompt"];

function sdPromptTextarea(target) {
  if (!(target instanceof HTMLTextAreaElement)) return null;
  const box = target.closest(SD_PROMPT_BOXES.map((id) => `#${id}`).join(", "));
  return box ? target : null;
}

// The text a box's edit put there, selected as given, handed to the page as typing would.
function sdSetPrompt(area, text, start, end) {
  area.value = text;
  area.setSelectionRange(start, end);
  area.dispatchEvent(new Event("input", { bubbles: true }));
}

// The text inside the bracket pair around `pos` (open...close, with no other bracket of the pair between it and
// `pos`, as A1111 1.10 looks for it): from after `open` to its weight's colon when it has a weight, else to `close`.
// [start, end) of that text, or null.
function sdInsidePair(text, pos, open, close) {
  const before = text.lastIndexOf(open, pos - 1);
  if (pos === 0 || before < 0 || text.lastIndexOf(close, pos - 1) > before) return null;
  const after = text.indexOf(close, pos);
  if (after < 0) return null;
  const nextOpen = text.indexOf(open, pos);
  if (nextOpen >= 0 && nextOpen < after) return null;
  const inside = text.slice(before + 1, after);
  const weighted = /:-?[\d.]+/.test(inside);
  return [before + 1, before + 1 + (weighted ? inside.lastIndexOf(":") : inside.length)];
}

// A weight as A1111's page writes it: at most 12 significant digits, and a whole number with ".0" (1.0, -1.0).
function sdWeightText(weight) {
  const rounded = parseFloat(weight.toPrecision(12));
  return Number.isInteger(rounded) ? `${rounded}.0` : String(rounded);
}

// Ctrl+Up / Ctrl+Down (Cmd on a Mac), as A1111 1.10's page does it: the selection's weight goes up or down by the
// setting's step. Without a selection it is the <extra network>, (group) or [group] the cursor is in, else the word
// (keyedit_delimiters and the chosen keyedit_delimiters_whitespace end it). Text not yet weighted becomes
// (text:1.0) first, and old-style ((text)) / [text] become (text:1.21) / (text:0.91) (rounded to the step); a group
// whose weight comes back to 1 loses its brackets.
function sdEditAttention(area, up) {
  let text = area.value;
  let start = area.selectionStart;
  let end = area.selectionEnd;
  if (start === end) {
    const pair = sdInsidePair(text, start, "<", ">") || sdInsidePair(text, start, "(", ")")
      || sdInsidePair(text, start, "[", "]");
    if (pair) {
      [start, end] = pair;
    } else {
      const chars = { Tab: "\t", "Carriage Return": "\r", "Line Feed": "\n" };
      const stops = sdOption("keyedit_delimiters")
        + (sdOption("keyedit_delimiters_whitespace") || []).map((name) => chars[name] || "").join("");
      while (start > 0 && !stops.includes(text[start - 1])) start--;
      while (end < text.length && !stops.includes(text[end])) end++;
      while (start < end && text[start] === " ") start++;
      while (end > start && text[end - 1] === " ") end--;
    }
  }
  let close = ")";
  const precision = sdOption("keyedit_precision_attention");
  let step = precision;
  const before = start > 0 ? text[start - 1] : "";
  const after = text[end];
  if (before === "<") {
    close = ">";
    step = sdOption("keyedit_precision_extra");
  } else if ((before === "(" && after === ")") || (before === "[" && after === "]")) {
    let depth = 0;  // old-style emphasis: each ( ) multiplies by 1.1, each [ ] divides
    while (text[start - depth - 1] === before && text[end + depth] === after) depth++;
    const old = Math.round((before === "[" ? (1 / 1.1) ** depth : 1.1 ** depth) / precision) * precision;
    text = `${text.slice(0, start - depth)}(${text.slice(start, end)}:${old})${text.slice(end + depth)}`;
    start -= depth - 1;
    end -= depth - 1;
  } else if (before !== "(") {
    while (end > start && text[end - 1] === " ") end--;
    if (start === end) return;
    text = `${text.slice(0, start)}(${text.slice(start, end)}:1.0)${text.slice(end)}`;
    start++;
    end++;
  }
  if (text[end] !== ":") return;
  const stop = text.indexOf(close, end + 1);
  if (stop < 0) return;
  const weight = parseFloat(text.slice(end + 1, stop));
  if (Number.isNaN(weight)) return;
  const changed = sdWeightText(weight + (up ? step : -step));
  if (close === ")" && parseFloat(changed) === 1) {
    text = text.slice(0, start - 1) + text.slice(start, end) + text.slice(stop + 1);
    sdSetPrompt(area, text, start - 1, end - 1);
  } else {
    sdSetPrompt(area, text.slice(0, end + 1) + changed + text.slice(stop), start, end);
  }
}

// Alt+Left / Alt+Right, as in A1111 (setting keyedit_move): the comma-separated elements the selection touches
// change places with their neighbour on that side, and stay selected.
function sdMoveElements(area, left) {
  const items = area.value.split(",");
  const commasBefore = (pos) => (area.value.slice(0, pos).match(/,/g) || []).length;
  const first = commasBefore(area.selectionStart);
  const last = commasBefore(area.selectionEnd);
  const to = left ? first - 1 : first + 1;
  if (to < 0 || to + (last - first) >= items.length) return;
  items.splice(to, 0, ...items.splice(first, last - first + 1));
  const offset = (index) => items.slice(0, index).reduce((n, item) => n + item.length + 1, 0);
  const lastMoved = to + (last - first);
  sdSetPrompt(area, items.join(","), offset(to), offset(lastMoved) + items[lastMoved].length);
}

document.addEventListener("keydown", (event) => {
  const area = sdPromptTextarea(event.target);
  if (!area) return;
  if ((event.ctrlKey || event.metaKey) && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    event.preventDefault();
    sdEditAttention(area, event.key === "ArrowUp");
  } else if (event.altKey && (event.key === "ArrowLeft" || event.key === "ArrowRight") && sdOption("keyedit_move")) {
    event.preventDefault();
    sdMoveElements(area, event.key === "ArrowLeft");
  }
});
