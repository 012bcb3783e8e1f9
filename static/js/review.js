// The review queue, keyboard-first: j/k move between pairs, a accept, r reject, e rewrite, x select.
// The page works without this file: every action is a real form button, and this script only clicks
// those buttons, so what is posted is the same either way.
(function () {
  "use strict";

  var current = null;
  var pendingId = null;
  var pendingUndo = null;
  var lastDecided = null; // the pair decided last on this page: u takes it back

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }
  function items() { return $all(".review-item:not(.decided)"); }

  function say(text) {
    var status = $("#review-status");
    if (status) status.textContent = text;
  }

  function focusItem(item) {
    if (current) current.classList.remove("current");
    current = item || null;
    if (!current) { say("No more pairs on this page."); return; }
    current.classList.add("current");
    current.focus({ preventScroll: true });
    current.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var list = items();
    if (!list.length) { focusItem(null); return; }
    var index = list.indexOf(current);
    index = index < 0 ? 0 : Math.max(0, Math.min(list.length - 1, index + step));
    focusItem(list[index]);
  }

  function isTyping(el) {
    if (!el) return false;
    if (el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable) return true;
    return el.tagName === "INPUT" && el.type !== "checkbox" && el.type !== "radio";
  }

  function press(selector) {
    var button = current && $(selector, current);
    if (button) button.click();
  }

  function updateSelection() {
    var checked = $all(".select-item:checked");
    var label = $("#selected-count");
    if (label) label.textContent = checked.length ? checked.length + " selected" : "Tick pairs";
    $all(".review-item").forEach(function (item) {
      var box = $(".select-item", item);
      item.classList.toggle("selected", Boolean(box && box.checked));
    });
  }

  function openRewrite() {
    if (!current) return;
    var box = $(".rewrite-box", current);
    var text = $(".rewrite-text", current);
    if (!box || !text) return;
    box.open = true;
    text.focus();
    text.select();
    say("Editing the caption: Ctrl+Enter saves, Esc leaves.");
  }

  function undoLast() {
    var item = lastDecided && document.getElementById("item-" + lastDecided);
    var button = item && $(".undo-decision", item);
    if (!button) { say("Nothing to undo on this page."); return; }
    button.click();
  }

  document.addEventListener("keydown", function (event) {
    if (!document.querySelector(".review-page")) return;
    var target = event.target;
    if (isTyping(target)) {
      if (target.classList.contains("rewrite-text") && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        var save = $(".rewrite-save", target.closest(".review-item"));
        if (save) save.click();
      } else if (event.key === "Escape") {
        target.blur();
        if (current) current.focus({ preventScroll: true });
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "a": press('button[data-shortcut="a"]'); break;
      case "r": press('button[data-shortcut="r"]'); break;
      case "e": openRewrite(); break;
      case "u": undoLast(); break;
      case "x":
        if (current) {
          var box = $(".select-item", current);
          if (box) { box.checked = !box.checked; updateSelection(); }
        }
        break;
      default: return;
    }
    event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var item = event.target.closest && event.target.closest(".review-item:not(.decided)");
    if (item && item !== current) focusItem(item);
  });
  document.addEventListener("change", function (event) {
    if (event.target.classList && event.target.classList.contains("select-item")) updateSelection();
  });

  // A conflict (409) or a refused rewrite (400) carries the item to show: swap it like a success.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status === 409 || status === 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    var item = event.detail.elt.closest && event.detail.elt.closest(".review-item");
    if (item && event.detail.elt.classList.contains("decide-form")) pendingId = item.dataset.captionId;
    if (item && event.detail.elt.classList.contains("undo-form")) pendingUndo = item.dataset.captionId;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (pendingUndo) {
      var restored = document.getElementById("item-" + pendingUndo);
      pendingUndo = null;
      lastDecided = null;
      if (restored) { focusItem(restored); say("Undone: the decision is taken back (see the audit trail)."); }
      return;
    }
    if (!pendingId) return;
    var swapped = document.getElementById("item-" + pendingId);
    pendingId = null;
    if (!swapped) return;
    if (!swapped.classList.contains("decided")) { focusItem(swapped); say("Not saved: see the message on the pair."); return; }
    lastDecided = swapped.dataset.captionId;
    say("Saved. u undoes it.");
    var following = items().filter(function (item) {
      return swapped.compareDocumentPosition(item) & Node.DOCUMENT_POSITION_FOLLOWING;
    });
    var list = items();
    focusItem(following[0] || list[list.length - 1] || null);
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (!document.querySelector(".review-page")) return;
    var first = items()[0];
    if (first) focusItem(first);
    updateSelection();
  });
})();
