// prefmill review: keyboard shortcuts for the pair page. Loaded from this server only (CSP).
// 1/a: A better, 2/b: B better, t/3: tie, x/4: both bad, s/0: skip, n: note, i: signals, Esc: leave the note box.
(function () {
  "use strict";
  var form = document.getElementById("decide");
  var keys = { "1": "A", "a": "A", "2": "B", "b": "B", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad",
               "0": "skip", "s": "skip" };
  if (form) {
    form.addEventListener("submit", function (e) {   // one decision per page: ignore repeats while it posts
      if (form.dataset.sent) { e.preventDefault(); return; }
      form.dataset.sent = "1";
    });
  }
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT")) {
      if (e.key === "Escape") { t.blur(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) { return; }
    var k = (e.key || "").toLowerCase();
    if (k === "n") {
      var note = document.getElementById("note");
      if (note) { e.preventDefault(); note.focus(); }
      return;
    }
    if (k === "i") {
      var d = document.getElementById("signals");
      if (d) { d.open = !d.open; }
      return;
    }
    var choice = keys[k];
    if (!choice || !form) { return; }
    var button = form.querySelector('button[name="choice"][value="' + choice + '"]');
    if (button && !button.disabled) {
      e.preventDefault();
      if (form.requestSubmit) { form.requestSubmit(button); } else { button.click(); }
    }
  });
})();
