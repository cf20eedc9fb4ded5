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
