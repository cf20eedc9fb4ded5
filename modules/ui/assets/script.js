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
document.addEventListener("click", sdCloseMenu);
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
