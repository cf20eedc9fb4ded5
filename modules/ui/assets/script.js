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
// menus of Generate, Interrupt and Skip offer. Each tab repeats on its own. While on, the body carries the
// class sd-forever-TAB, which outlines the tab's buttons.
const sdForever = {};

function sdForeverStart(tab) {
  sdForeverStop(tab);
  const tick = () => {
    const button = document.getElementById(`${tab}_generate`);
    if (button && button.offsetParent !== null) button.click();
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
