// The task screen, enhanced: keyboard-first ranking with ties, ratings, drag and drop, undo, timing.
// The page works without this file: every control is a real form field (a rank select per caption, a
// radio per rating). This script only drives those fields, so what is posted is the same either way.
(function () {
  "use strict";

  var state = null; // {form, list, order: [captionId], ties: [bool per position], focus, criterion, ...}

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function cards() { return $all(".caption-card", state.list); }
  function cardById(id) { return $('.caption-card[data-caption-id="' + id + '"]', state.list); }
  function criteria() {
    var first = cards()[0];
    return first ? $all(".rating-row", first).map(function (row) { return row.dataset.criterion; }) : [];
  }

  function newKey() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return null; // keep the server's key
  }

  // --- state <-> form fields ------------------------------------------------------------------------

  function readRatings() {
    var ratings = {};
    $all('input[type=radio]:checked', state.list).forEach(function (input) { ratings[input.name] = input.value; });
    return ratings;
  }

  function snapshot() {
    return { order: state.order.slice(), ties: state.ties.slice(), ratings: readRatings() };
  }

  function restore(snap) {
    state.order = snap.order.slice();
    state.ties = snap.ties.slice();
    $all("input[type=radio]", state.list).forEach(function (input) {
      input.checked = snap.ratings[input.name] === input.value;
    });
    render();
  }

  function commit() {
    state.undo.push(state.current);
    if (state.undo.length > 200) state.undo.shift();
    state.current = snapshot();
    $(".undo-button", state.form).disabled = state.undo.length === 0;
  }

  function undo() {
    if (!state.undo.length) { say("Nothing to undo."); return; }
    state.current = state.undo.pop();
    restore(state.current);
    $(".undo-button", state.form).disabled = state.undo.length === 0;
    say("Undone.");
  }

  // Tier number per position: a new tier starts wherever the position is not tied with the one above.
  function tierNumbers() {
    var numbers = [], tier = 0;
    for (var p = 0; p < state.order.length; p++) {
      if (p === 0 || !state.ties[p]) tier = p + 1; // competition numbering: 1, 2, 2, 4
      numbers.push(tier);
    }
    return numbers;
  }

  function render() {
    var numbers = tierNumbers();
    state.order.forEach(function (id, p) {
      var card = cardById(id);
      state.list.appendChild(card); // re-appending moves it: DOM order = ranking order
      var tied = p > 0 && state.ties[p];
      var tiedBelow = p + 1 < state.order.length && state.ties[p + 1];
      card.classList.toggle("tied-above", tied);
      card.classList.toggle("tied-below", tiedBelow);
      $(".rank-badge", card).textContent = (tied || tiedBelow ? "=" : "") + numbers[p];
      $(".tier-select", card).value = String(numbers[p]);
      card.classList.toggle("is-focused", p === state.focus);
      card.setAttribute("aria-current", p === state.focus ? "true" : "false");
    });
    $all(".rating-row", state.list).forEach(function (row) {
      var active = row.dataset.criterion === criteria()[state.criterion];
      var focusedCard = row.closest(".caption-card").classList.contains("is-focused");
      row.classList.toggle("is-active", active && focusedCard);
      row.classList.toggle("is-rated", !!$("input:checked", row));
      var checked = $("input:checked", row);
      $(".anchor-text", row).textContent = checked ? checked.closest(".rate").title.split(": ").slice(1).join(": ") : "";
    });
    $all("tr[data-legend]").forEach(function (tr) {
      tr.classList.toggle("is-active", tr.dataset.legend === criteria()[state.criterion]);
    });
  }

  function say(text) {
    var status = $("#task-status");
    if (status) status.textContent = text;
  }

  // --- actions --------------------------------------------------------------------------------------

  function setFocus(p, scroll) {
    state.focus = Math.max(0, Math.min(state.order.length - 1, p));
    render();
    var card = cardById(state.order[state.focus]);
    if (scroll !== false && card.scrollIntoView) card.scrollIntoView({ block: "nearest" });
  }

  function move(delta) {
    var p = state.focus, q = p + delta;
    if (q < 0 || q >= state.order.length) return;
    // Ties belong to positions, not captions: moving a caption into a tied group joins the group.
    var id = state.order[p];
    state.order[p] = state.order[q];
    state.order[q] = id;
    state.focus = q;
    commit();
    render();
    say("Moved " + cardById(id).dataset.letter + (delta < 0 ? " up." : " down."));
  }

  function toggleTie() {
    var p = state.focus;
    if (p === 0) { say("The top caption has nothing above it to tie with."); return; }
    state.ties[p] = !state.ties[p];
    commit();
    render();
    say(state.ties[p] ? "Tied with the caption above." : "Untied.");
  }

  function rate(value) {
    var key = criteria()[state.criterion];
    var card = cardById(state.order[state.focus]);
    var input = $('input[name="rate_' + card.dataset.captionId + "_" + key + '"][value="' + value + '"]', card);
    if (!input) return;
    input.checked = true;
    commit();
    say(card.dataset.letter + ": " + $("legend", input.closest(".rating-row")).textContent + " " + value + ".");
    // Advance: next criterion of this caption, then the first criterion of the next caption.
    if (state.criterion < criteria().length - 1) state.criterion += 1;
    else if (state.focus < state.order.length - 1) { state.criterion = 0; state.focus += 1; }
    setFocus(state.focus);
  }

  function firstMissing() {
    for (var p = 0; p < state.order.length; p++) {
      var card = cardById(state.order[p]);
      var rows = $all(".rating-row", card);
      for (var c = 0; c < rows.length; c++) {
        if (!$("input:checked", rows[c])) return { p: p, c: c, card: card, row: rows[c] };
      }
    }
    return null;
  }

  function submit() {
    if (state.form.classList.contains("is-busy")) return; // a second Enter while saving (the key would dedupe it anyway)
    var missing = firstMissing();
    if (missing) {
      state.focus = missing.p;
      state.criterion = missing.c;
      setFocus(missing.p);
      say("Rate " + $("legend", missing.row).textContent + " for caption " + missing.card.dataset.letter + " first.");
      return;
    }
    $('input[name="duration_ms"]', state.form).value = String(Math.round(elapsed()));
    state.form.requestSubmit ? state.form.requestSubmit() : state.form.submit();
  }

  // Time on task, not counting time the tab was hidden.
  function elapsed() {
    var total = state.activeMs;
    if (!document.hidden && state.shownAt !== null) total += performance.now() - state.shownAt;
    return total;
  }
  document.addEventListener("visibilitychange", function () {
    if (!state) return;
    if (document.hidden && state.shownAt !== null) { state.activeMs += performance.now() - state.shownAt; state.shownAt = null; }
    else if (!document.hidden) state.shownAt = performance.now();
  });

  // --- keyboard -------------------------------------------------------------------------------------

  function typing(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select") return true;
    if (tag === "input") return !/^(radio|checkbox|button|submit|hidden)$/.test(target.type);
    return target.isContentEditable;
  }

  function onKey(event) {
    if (!state || !document.body.contains(state.form)) return;
    var inSkip = event.target.closest && event.target.closest("#skip-form");
    if (inSkip && event.key === "Enter" && event.target.tagName.toLowerCase() === "select") {
      event.preventDefault();
      inSkip.requestSubmit ? inSkip.requestSubmit() : inSkip.submit();
      return;
    }
    if (inSkip && event.key === "Escape") { event.target.blur(); return; }
    if (typing(event.target) || inSkip) return;
    var key = event.key, handled = true;
    if ((event.ctrlKey || event.metaKey) && (key === "z" || key === "Z")) undo();
    else if (event.ctrlKey || event.metaKey) handled = false;
    else if (event.altKey && key === "ArrowUp") move(-1);
    else if (event.altKey && key === "ArrowDown") move(1);
    else if (key === "j" || key === "ArrowDown") setFocus(state.focus + 1);
    else if (key === "k" || key === "ArrowUp") setFocus(state.focus - 1);
    else if (key === "l" || key === "ArrowRight") { state.criterion = Math.min(criteria().length - 1, state.criterion + 1); render(); }
    else if (key === "h" || key === "ArrowLeft") { state.criterion = Math.max(0, state.criterion - 1); render(); }
    else if (/^[1-5]$/.test(key)) rate(key);
    else if (key === "[") move(-1);
    else if (key === "]") move(1);
    else if (key === "=") toggleTie();
    else if (key === "u") undo();
    else if (key === "Enter") submit();
    else if (key === "s") { var reason = $("#skip-reason"); if (reason) reason.focus(); say("Pick a reason, then press Enter to skip."); }
    else if (key === "i") { var details = $("details.instructions"); if (details) details.open = !details.open; }
    else handled = false;
    if (handled) event.preventDefault();
  }
  document.addEventListener("keydown", onKey);

  // --- mouse: drag and drop, clicks -----------------------------------------------------------------

  function bindMouse() {
    var dragged = null;
    state.list.addEventListener("dragstart", function (event) {
      var card = event.target.closest(".caption-card");
      if (!card) return;
      dragged = card.dataset.captionId;
      card.classList.add("is-dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged);
    });
    state.list.addEventListener("dragend", function () {
      $all(".is-dragging, .drop-before, .drop-after", state.list).forEach(function (el) {
        el.classList.remove("is-dragging", "drop-before", "drop-after");
      });
      dragged = null;
    });
    state.list.addEventListener("dragover", function (event) {
      var card = event.target.closest(".caption-card");
      if (!dragged || !card) return;
      event.preventDefault();
      var box = card.getBoundingClientRect();
      var before = event.clientY < box.top + box.height / 2;
      $all(".drop-before, .drop-after", state.list).forEach(function (el) { el.classList.remove("drop-before", "drop-after"); });
      card.classList.add(before ? "drop-before" : "drop-after");
    });
    state.list.addEventListener("drop", function (event) {
      var card = event.target.closest(".caption-card");
      if (!dragged || !card) return;
      event.preventDefault();
      var box = card.getBoundingClientRect();
      var before = event.clientY < box.top + box.height / 2;
      var from = state.order.indexOf(dragged);
      state.order.splice(from, 1);
      var to = state.order.indexOf(card.dataset.captionId) + (before ? 0 : 1);
      if (card.dataset.captionId === dragged) to = from;
      state.order.splice(to, 0, dragged);
      state.focus = to;
      commit();
      render();
    });
    state.list.addEventListener("click", function (event) {
      var card = event.target.closest(".caption-card");
      if (!card) return;
      state.focus = state.order.indexOf(card.dataset.captionId);
      var row = event.target.closest(".rating-row");
      if (row) state.criterion = Math.max(0, criteria().indexOf(row.dataset.criterion));
      render();
    });
    state.list.addEventListener("change", function (event) {
      if (event.target.type === "radio") { commit(); render(); }
      if (event.target.classList.contains("tier-select")) {
        // A rank typed into a select (keyboard users on the no-JS controls): rebuild order from numbers.
        fromSelects();
        commit();
        render();
      }
    });
    $(".undo-button", state.form).addEventListener("click", undo);
  }

  // Order and ties from the rank selects: used after a server error re-shows what was entered.
  function fromSelects() {
    var entries = cards().map(function (card, index) {
      var value = parseInt($(".tier-select", card).value, 10);
      return { id: card.dataset.captionId, tier: isNaN(value) ? 99 + index : value, index: index };
    });
    entries.sort(function (a, b) { return a.tier - b.tier || a.index - b.index; });
    state.order = entries.map(function (e) { return e.id; });
    state.ties = entries.map(function (e, p) { return p > 0 && entries[p - 1].tier === e.tier; });
  }

  // --- setup ----------------------------------------------------------------------------------------

  function init() {
    var form = $("#task-form");
    if (!form || form.dataset.enhanced) { if (!form) state = null; return; }
    form.dataset.enhanced = "1";
    document.documentElement.classList.add("annotate-js");
    var list = $("#ranking", form);
    state = { form: form, list: list, order: [], ties: [], focus: 0, criterion: 0, undo: [], activeMs: 0,
              shownAt: document.hidden ? null : performance.now() };
    var anySelected = $all(".tier-select", list).some(function (select) { return select.value !== ""; });
    if (anySelected) fromSelects();
    else {
      state.order = cards().map(function (card) { return card.dataset.captionId; });
      state.ties = state.order.map(function () { return false; });
    }
    var key = newKey();
    if (key) $('input[name="client_key"]', form).value = key;
    bindMouse();
    state.current = snapshot();
    render();
  }

  // htmx answers refused submits with 4xx and the message in the body: show it instead of dropping it.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status >= 400 && status < 500) { event.detail.shouldSwap = true; event.detail.isError = false; }
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (state && event.detail.elt === state.form) { state.form.classList.add("is-busy"); say("Saving…"); }
  });
  document.addEventListener("htmx:afterRequest", function () {
    if (state && state.form) state.form.classList.remove("is-busy");
  });
  document.addEventListener("htmx:afterSwap", init);
  document.addEventListener("DOMContentLoaded", init);
  if (document.readyState !== "loading") init();
})();
