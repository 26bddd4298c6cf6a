// Copy buttons of the restore commands: the text of the <pre> the button names.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const text = document.getElementById(button.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // No clipboard API (plain http from another host): select the text for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById(button.dataset.copy));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});

// Links to Airflow's own pages (target="_top") open in the Airflow UI around this frame. The UI
// frames plugin pages in a same-origin iframe sandboxed without allow-top-navigation, so the
// frame may not navigate the window itself: an anchor of the top document follows the link.
document.addEventListener("click", (event) => {
  const link = event.target.closest('a[target="_top"]');
  if (!link || window.top === window) return;
  try {
    const top = window.top.document;
    const anchor = top.createElement("a");
    anchor.href = link.href;
    top.body.appendChild(anchor);
    anchor.click();
    anchor.remove();
    event.preventDefault();
  } catch (err) {
    // Another origin frames the page: leave the link to the browser.
  }
});
