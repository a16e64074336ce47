// Number keys 1-9 press the label buttons (#label-key-N) unless the user is typing somewhere.
// Put in the page's head by app/ui.py head_html(); runs once however often the head is read.
(() => {
  if (window.byolLabelKeys) return;
  window.byolLabelKeys = true;
  document.addEventListener('keydown', e => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || !/^[1-9]$/.test(e.key)) return;
    const t = e.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    const b = document.getElementById('label-key-' + e.key);
    if (!b || b.offsetParent === null) return;
    e.preventDefault();
    b.click();
  });
})();
