// The task screen, enhanced: ratings by keyboard, a ranking that follows them live (or the annotator's own
// order), drag and drop, undo, timing, zoom, and answers that survive a reload.
// The page works without this file: every control is a real form field (a rank select per caption, a
// radio per rating). This script only drives those fields, so what is posted is the same either way.
//
// A ranking is always an act: it is derived from the annotator's ratings ("ratings": sorted by their mean,
// ties kept) or arranged by them ("adjusted"). Until one of the two has happened nothing is ranked, the
// rank fields stay empty, and the server refuses a submit: the display order is never a ranking.
(function () {
  "use strict";

  var state = null; // see init()
  var zoom = null; // the open zoom overlay, if any

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function cards() { return $all(".caption-card", state.list); }
  function cardById(id) { return $('.caption-card[data-caption-id="' + id + '"]', state.list); }
  function letter(id) { return cardById(id).dataset.letter; }

  function newKey() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return null; // keep the server's key
  }

  // --- ratings and the ranking they give ------------------------------------------------------------

  function readRatings() {
    var ratings = {};
    $all("input[type=radio]:checked", state.list).forEach(function (input) { ratings[input.name] = input.value; });
    return ratings;
  }

  // Per caption: the sum and count of its ratings. Every caption has the same criteria, so sums order
  // exactly like means (the server compares sums too).
  function totals() {
    var result = {};
    state.display.forEach(function (id) {
      var sum = 0, n = 0;
      $all("input[type=radio]:checked", cardById(id)).forEach(function (input) { sum += parseInt(input.value, 10); n += 1; });
      result[id] = { sum: sum, n: n, complete: n === state.criteria.length };
    });
    return result;
  }

  function allRated() {
    var t = totals();
    return state.display.every(function (id) { return t[id].complete; });
  }

  function derived(t) {
    var index = {};
    state.display.forEach(function (id, i) { index[id] = i; });
    var order = state.display.slice().sort(function (a, b) { return t[b].sum - t[a].sum || index[a] - index[b]; });
    var ties = order.map(function (id, p) { return p > 0 && t[order[p - 1]].sum === t[id].sum; });
    return { order: order, ties: ties };
  }

  // After any change of ratings: a ranking that follows the ratings stays in step with them; an order the
  // annotator arranged is left alone. Returns true when the ranking has just come about.
  function follow() {
    if (state.basis === "adjusted") return false;
    if (!allRated()) { state.basis = ""; return false; }
    var wasRanked = state.basis === "ratings";
    var focusedId = state.order[state.focus];
    var d = derived(totals());
    state.order = d.order;
    state.ties = d.ties;
    state.basis = "ratings";
    state.focus = Math.max(0, state.order.indexOf(focusedId));
    return !wasRanked;
  }

  // --- undo and the reload-proof copy ---------------------------------------------------------------

  function snapshot() {
    return { order: state.order.slice(), ties: state.ties.slice(), ratings: readRatings(), basis: state.basis };
  }

  function restore(snap) {
    state.order = snap.order.slice();
    state.ties = snap.ties.slice();
    state.basis = snap.basis || "";
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
    save();
  }

  function undo() {
    if (!state.undo.length) { say("Nothing to undo."); return; }
    state.current = state.undo.pop();
    restore(state.current);
    $(".undo-button", state.form).disabled = state.undo.length === 0;
    save();
    say("Undone.");
  }

  // What the annotator entered lives in sessionStorage (this tab only) under the task and assignment
  // until the answer is saved, so a reload or a crash of the tab loses nothing.
  function save() {
    if (!state.storageKey) return;
    try {
      var snap = snapshot();
      snap.clientKey = $('input[name="client_key"]', state.form).value;
      snap.activeMs = elapsed();
      window.sessionStorage.setItem(state.storageKey, JSON.stringify(snap));
    } catch (e) { /* storage full or disabled: the page still works */ }
  }

  function load(key) {
    try { return JSON.parse(window.sessionStorage.getItem(key) || "null"); } catch (e) { return null; }
  }

  function forget(key) {
    try { if (key) window.sessionStorage.removeItem(key); } catch (e) { /* nothing to forget */ }
  }

  // Entries of tasks that are gone (saved, skipped, expired) are dropped when another task opens.
  function pruneOthers(keep) {
    try {
      for (var i = window.sessionStorage.length - 1; i >= 0; i--) {
        var key = window.sessionStorage.key(i);
        if (key && key !== keep && /^loupe-(task|revise):/.test(key)) window.sessionStorage.removeItem(key);
      }
    } catch (e) { /* nothing to prune */ }
  }

  // --- drawing --------------------------------------------------------------------------------------

  // Tier number per position: a new tier starts wherever the position is not tied with the one above.
  function tierNumbers(order, ties) {
    var numbers = [], tier = 0;
    for (var p = 0; p < order.length; p++) {
      if (p === 0 || !ties[p]) tier = p + 1; // competition numbering: 1, 2, 2, 4
      numbers.push(tier);
    }
    return numbers;
  }

  // While ratings are still missing: the rank each fully rated caption has so far, for the live badges.
  function provisional(t) {
    var rated = state.display.filter(function (id) { return t[id].complete; });
    var ranks = {};
    rated.forEach(function (id) {
      ranks[id] = 1 + rated.filter(function (other) { return t[other].sum > t[id].sum; }).length;
    });
    return ranks;
  }

  function rankingText(order, ties) {
    var parts = [];
    order.forEach(function (id, p) {
      if (p > 0) parts.push(ties[p] ? " = " : " > ");
      parts.push(letter(id));
    });
    return parts.join("");
  }

  function render() {
    var ranked = state.basis !== "";
    var numbers = tierNumbers(state.order, state.ties);
    var t = totals();
    var soFar = ranked ? null : provisional(t);
    var currentCriterion = state.criteria[state.criterion];
    state.order.forEach(function (id, p) {
      var card = cardById(id);
      state.list.appendChild(card); // re-appending moves it: DOM order = ranking order
      var tied = ranked && p > 0 && state.ties[p];
      var tiedBelow = ranked && p + 1 < state.order.length && state.ties[p + 1];
      card.classList.toggle("tied-above", tied);
      card.classList.toggle("tied-below", tiedBelow);
      card.classList.toggle("is-unranked", !ranked);
      var badge = $(".rank-badge", card);
      if (ranked) badge.textContent = (tied || tiedBelow ? "=" : "") + numbers[p];
      else badge.textContent = soFar[id] ? String(soFar[id]) : "–";
      badge.classList.toggle("provisional", !ranked);
      $(".tier-select", card).value = ranked ? String(numbers[p]) : "";
      card.classList.toggle("is-focused", p === state.focus);
      card.setAttribute("aria-current", p === state.focus ? "true" : "false");
    });
    $all(".rating-row", state.list).forEach(function (row) {
      var focusedCard = row.closest(".caption-card").classList.contains("is-focused");
      var checked = $("input:checked", row);
      row.classList.toggle("is-active", row.dataset.criterion === currentCriterion && focusedCard);
      row.classList.toggle("is-rated", !!checked);
      if (checked) { row.classList.remove("is-missing"); $(".missing-note", row).hidden = true; }
      $(".anchor-text", row).textContent = checked ? checked.closest(".rate").title.split(": ").slice(1).join(": ") : "";
    });
    $all("tr[data-legend]").forEach(function (tr) {
      tr.classList.toggle("is-active", tr.dataset.legend === currentCriterion);
    });
    // Empty until the ranking was derived or arranged: the server refuses such a submit.
    $('input[name="ranking_basis"]', state.form).value = state.basis;
    summary(t);
  }

  function summary(t) {
    var el = $("#ranking-summary");
    if (!el) return;
    el.classList.toggle("is-ranked", state.basis !== "");
    if (state.basis === "ratings") {
      el.textContent = "Ranked by your ratings: " + rankingText(state.order, state.ties) +
        ". Adjust with [ ] or =, or press Enter to submit.";
    } else if (state.basis === "adjusted") {
      el.textContent = "Your order: " + rankingText(state.order, state.ties) +
        ". Ratings no longer reorder it; r ranks by your ratings again.";
    } else {
      var left = state.display.filter(function (id) { return !t[id].complete; }).length;
      el.textContent = left === state.display.length
        ? "Not ranked yet: rate every caption and they are ranked by your mean rating, or put them in order yourself."
        : "Not ranked yet: " + left + " caption" + (left === 1 ? "" : "s") + " still to rate; the badges show the order so far.";
    }
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

  // Moving or tying captions is the annotator's own ranking: from then on ratings do not reorder it.
  function arranged() {
    state.basis = "adjusted";
  }

  function move(delta) {
    var p = state.focus, q = p + delta;
    if (q < 0 || q >= state.order.length) return;
    // Ties belong to positions, not captions: moving a caption into a tied group joins the group.
    var id = state.order[p];
    state.order[p] = state.order[q];
    state.order[q] = id;
    state.focus = q;
    arranged();
    commit();
    render();
    say("Moved " + letter(id) + (delta < 0 ? " up." : " down."));
  }

  function toggleTie() {
    var p = state.focus;
    if (p === 0) { say("The top caption has nothing above it to tie with."); return; }
    state.ties[p] = !state.ties[p];
    arranged();
    commit();
    render();
    say(state.ties[p] ? "Tied with the caption above." : "Untied.");
  }

  function rerank() {
    state.basis = "";
    if (!follow()) { commit(); render(); say("Rate every caption first; they are then ranked by your ratings."); return; }
    commit();
    setFocus(0);
    say("Ranked by your ratings again.");
  }

  function rate(value) {
    var key = state.criteria[state.criterion];
    var id = state.order[state.focus];
    var card = cardById(id);
    var input = $('input[name="rate_' + id + "_" + key + '"][value="' + value + '"]', card);
    if (!input) return;
    input.checked = true;
    var justRanked = follow();
    commit();
    if (justRanked) {
      // Every caption is rated: the cards now stand in the order the ratings give. Start at the top, where
      // the annotator checks the order before pressing Enter.
      state.criterion = 0;
      setFocus(0);
      say("All rated. Ranked by your ratings: " + rankingText(state.order, state.ties) + ". Enter submits.");
      return;
    }
    say(letter(id) + ": " + $("legend", input.closest(".rating-row")).textContent + " " + value + ".");
    advanceFrom(id);
  }

  // After a rating: the next criterion of this caption, then the first criterion of the next one. The
  // caption may have moved (a ranking that follows the ratings), so go on from where it is now.
  function advanceFrom(id) {
    var p = state.order.indexOf(id);
    if (state.criterion < state.criteria.length - 1) { state.criterion += 1; state.focus = p; }
    else if (p < state.order.length - 1) { state.criterion = 0; state.focus = p + 1; }
    else state.focus = p;
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
    state.form.requestSubmit ? state.form.requestSubmit() : state.form.dispatchEvent(new Event("submit", { cancelable: true }));
  }

  // Every submit, by Enter or by a click on the button, passes here first (capture, before htmx sees it):
  // a missing rating stops it where the eye is, and the form says how the ranking came about.
  document.addEventListener("submit", function (event) {
    if (!state || event.target !== state.form) return;
    var missing = firstMissing();
    if (missing) {
      event.preventDefault();
      event.stopPropagation();
      state.criterion = missing.c;
      setFocus(missing.p, false);
      missing.row.classList.add("is-missing");
      $(".missing-note", missing.row).hidden = false;
      if (missing.row.scrollIntoView) missing.row.scrollIntoView({ block: "center" });
      say("Rate " + $("legend", missing.row).textContent + " for caption " + missing.card.dataset.letter + " first.");
      return;
    }
    follow();
    render();
    $('input[name="duration_ms"]', state.form).value = String(Math.round(elapsed()));
  }, true);

  // Time on task, not counting time the tab was hidden.
  function elapsed() {
    var total = state.activeMs;
    if (!document.hidden && state.shownAt !== null) total += performance.now() - state.shownAt;
    return total;
  }

  // --- a task that is no longer ours (Back/Forward, another tab) -----------------------------------

  function checkHeld() {
    var layout = $(".task-layout");
    var url = layout && layout.dataset.stateUrl;
    if (!state || !url || state.stale) return;
    var form = state.form;
    form.classList.add("is-checking");
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        form.classList.remove("is-checking");
        if (data && !data.held && state && state.form === form) markStale(data.message);
      })
      .catch(function () { form.classList.remove("is-checking"); });
  }

  function markStale(message) {
    state.stale = true;
    forget(state.storageKey);
    var banner = $(".task-stale");
    $(".task-stale-message", banner).textContent = message;
    banner.hidden = false;
    state.form.classList.add("is-stale");
    $all("input, select, button, textarea", state.form).concat($all("#skip-form input, #skip-form select, #skip-form button"))
      .forEach(function (el) { el.disabled = true; });
    $("a.button", banner).focus();
  }

  // --- zoom and pan ---------------------------------------------------------------------------------

  function openZoom() {
    var source = $(".task-image");
    if (!source || zoom) return;
    var overlay = document.createElement("div");
    overlay.className = "zoom-overlay";
    overlay.setAttribute("role", "dialog");
    overlay.setAttribute("aria-label", "Zoomed image");
    overlay.tabIndex = -1;
    var img = document.createElement("img");
    img.className = "zoom-image";
    img.src = source.currentSrc || source.src;
    img.alt = source.alt;
    img.draggable = false;
    var hint = document.createElement("p");
    hint.className = "zoom-hint";
    hint.textContent = "Wheel or + / − to zoom, drag or arrows to pan, 0 to fit, Esc or z to close";
    overlay.appendChild(img);
    overlay.appendChild(hint);
    document.body.appendChild(overlay);
    zoom = { overlay: overlay, img: img, scale: 1, x: 0, y: 0, back: document.activeElement, drag: null };
    overlay.addEventListener("wheel", function (event) {
      event.preventDefault();
      zoomBy(event.deltaY < 0 ? 1.25 : 0.8);
    }, { passive: false });
    overlay.addEventListener("pointerdown", function (event) {
      zoom.drag = { x: event.clientX - zoom.x, y: event.clientY - zoom.y, moved: false };
      overlay.setPointerCapture(event.pointerId);
    });
    overlay.addEventListener("pointermove", function (event) {
      if (!zoom || !zoom.drag) return;
      zoom.x = event.clientX - zoom.drag.x;
      zoom.y = event.clientY - zoom.drag.y;
      zoom.drag.moved = true;
      applyZoom();
    });
    overlay.addEventListener("pointerup", function () {
      if (!zoom) return;
      var moved = zoom.drag && zoom.drag.moved;
      zoom.drag = null;
      if (!moved && zoom.scale === 1) closeZoom(); // a plain click on the fitted image closes it
    });
    applyZoom();
    overlay.focus();
  }

  function zoomBy(factor) {
    zoom.scale = Math.max(1, Math.min(10, zoom.scale * factor));
    if (zoom.scale === 1) { zoom.x = 0; zoom.y = 0; }
    applyZoom();
  }

  function applyZoom() {
    // CSSOM, not a style attribute: the Content-Security-Policy allows this.
    zoom.img.style.transform = "translate(" + zoom.x + "px, " + zoom.y + "px) scale(" + zoom.scale + ")";
    zoom.overlay.classList.toggle("is-zoomed", zoom.scale > 1);
  }

  function closeZoom() {
    if (!zoom) return;
    var back = zoom.back;
    zoom.overlay.remove();
    zoom = null;
    if (back && back.focus && document.body.contains(back)) back.focus({ preventScroll: true });
  }

  function zoomKey(event) {
    var key = event.key;
    if (key === "Escape" || key === "z") closeZoom();
    else if (key === "+" || key === "=") zoomBy(1.25);
    else if (key === "-" || key === "_") zoomBy(0.8);
    else if (key === "0") { zoom.scale = 1; zoom.x = 0; zoom.y = 0; applyZoom(); }
    else if (key === "ArrowLeft") { zoom.x += 60; applyZoom(); }
    else if (key === "ArrowRight") { zoom.x -= 60; applyZoom(); }
    else if (key === "ArrowUp") { zoom.y += 60; applyZoom(); }
    else if (key === "ArrowDown") { zoom.y -= 60; applyZoom(); }
    event.preventDefault(); // nothing else happens under the overlay
  }

  // --- keyboard -------------------------------------------------------------------------------------

  function typing(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select") return true;
    if (tag === "input") return !/^(radio|checkbox|button|submit|hidden)$/.test(target.type);
    return target.isContentEditable;
  }

  function onKey(event) {
    if (zoom) { zoomKey(event); return; }
    if (!state || !document.body.contains(state.form) || state.stale) return;
    var inSkip = event.target.closest && event.target.closest("#skip-form");
    if (inSkip && event.key === "Enter" && event.target.tagName.toLowerCase() === "select") {
      event.preventDefault();
      inSkip.requestSubmit ? inSkip.requestSubmit() : inSkip.submit();
      return;
    }
    if (inSkip && event.key === "Escape") { event.target.blur(); focusTask(); return; }
    if (typing(event.target) || inSkip) return;
    var key = event.key, handled = true;
    if ((event.ctrlKey || event.metaKey) && (key === "z" || key === "Z")) undo();
    else if (event.ctrlKey || event.metaKey) handled = false;
    else if (event.altKey && key === "ArrowUp") move(-1);
    else if (event.altKey && key === "ArrowDown") move(1);
    else if (key === "j" || key === "ArrowDown") setFocus(state.focus + 1);
    else if (key === "k" || key === "ArrowUp") setFocus(state.focus - 1);
    else if (key === "l" || key === "ArrowRight") { state.criterion = Math.min(state.criteria.length - 1, state.criterion + 1); render(); }
    else if (key === "h" || key === "ArrowLeft") { state.criterion = Math.max(0, state.criterion - 1); render(); }
    else if (/^[1-5]$/.test(key)) rate(key);
    else if (key === "[") move(-1);
    else if (key === "]") move(1);
    else if (key === "=") toggleTie();
    else if (key === "r") rerank();
    else if (key === "u") undo();
    else if (key === "z") openZoom();
    else if (key === "Enter") submit();
    else if (key === "s") { var reason = $("#skip-reason"); if (reason) reason.focus(); say("Pick a reason, then press Enter to skip."); }
    else if (key === "p") { var last = $('a[data-shortcut="p"]'); if (last) window.location.assign(last.href); else handled = false; }
    else if (key === "i") { var details = $("details.instructions"); if (details) details.open = !details.open; }
    else handled = false;
    if (handled) event.preventDefault();
  }
  document.addEventListener("keydown", onKey);

  // Keys go to the task, not to a control left focused by the previous one (the skip reason, say).
  function focusTask() {
    if (state && state.list) state.list.focus({ preventScroll: true });
  }

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
      arranged();
      commit();
      render();
    });
    state.list.addEventListener("click", function (event) {
      var card = event.target.closest(".caption-card");
      if (!card) return;
      state.focus = state.order.indexOf(card.dataset.captionId);
      var row = event.target.closest(".rating-row");
      if (row) state.criterion = Math.max(0, state.criteria.indexOf(row.dataset.criterion));
      render();
    });
    state.list.addEventListener("change", function (event) {
      if (event.target.type === "radio") {
        // A rating by mouse moves the keyboard on like a digit does, so the two mix freely.
        var card = event.target.closest(".caption-card");
        state.criterion = Math.max(0, state.criteria.indexOf(event.target.closest(".rating-row").dataset.criterion));
        var justRanked = follow();
        commit();
        if (justRanked) {
          state.criterion = 0;
          setFocus(0);
          say("All rated. Ranked by your ratings: " + rankingText(state.order, state.ties) + ".");
        } else advanceFrom(card.dataset.captionId);
      }
      if (event.target.classList.contains("tier-select")) {
        // A rank typed into a select (keyboard users on the plain controls): the annotator's own order.
        fromSelects();
        arranged();
        commit();
        render();
      }
    });
    $(".undo-button", state.form).addEventListener("click", undo);
    var zoomLink = $(".zoom-link");
    if (zoomLink) zoomLink.addEventListener("click", function (event) { event.preventDefault(); openZoom(); });
  }

  // Order and ties from the rank selects: after a server error re-shows what was entered, or when a
  // stored judgment is reopened for correction.
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
    if (zoom) closeZoom();
    var form = $("#task-form");
    if (!form) {
      state = null;
      // A refused answer without a task to show (409, 410): the way on is one key away.
      var next = $(".task-error .next-task-button");
      if (next) next.focus();
      return;
    }
    if (form.dataset.enhanced) return;
    form.dataset.enhanced = "1";
    document.documentElement.classList.add("annotate-js");
    var list = $("#ranking", form);
    state = { form: form, list: list, display: [], order: [], ties: [], focus: 0, criterion: 0, undo: [],
              basis: "", criteria: [], stale: false, activeMs: 0, storageKey: form.dataset.storageKey || "",
              shownAt: document.hidden ? null : performance.now() };
    state.display = cards().map(function (card) { return card.dataset.captionId; });
    var first = cards()[0];
    state.criteria = first ? $all(".rating-row", first).map(function (row) { return row.dataset.criterion; }) : [];
    var basis = form.dataset.basis || "";
    // The plain form's and the API's "confirmed" is an order of the annotator's own, like "adjusted".
    state.basis = basis === "confirmed" || basis === "form" ? "adjusted" : basis;
    var anySelected = $all(".tier-select", list).some(function (select) { return select.value !== ""; });
    if (state.basis === "adjusted" && anySelected) fromSelects();
    else {
      if (state.basis === "adjusted") state.basis = "";
      state.order = state.display.slice();
      state.ties = state.order.map(function () { return false; });
      follow();
    }
    var key = newKey();
    if (key) $('input[name="client_key"]', form).value = key;
    pruneOthers(state.storageKey);
    var stored = state.storageKey ? load(state.storageKey) : null;
    if (stored && stored.order && stored.order.slice().sort().join() === state.display.slice().sort().join()) {
      $all("input[type=radio]", list).forEach(function (input) { input.checked = stored.ratings[input.name] === input.value; });
      state.order = stored.order.slice();
      state.ties = stored.ties.slice();
      state.basis = stored.basis || "";
      if (stored.clientKey) $('input[name="client_key"]', form).value = stored.clientKey; // a retry stays idempotent
      state.activeMs = stored.activeMs || 0;
      say("Restored what you entered before the page was reloaded.");
    }
    bindMouse();
    state.current = snapshot();
    render();
    var active = document.activeElement;
    if (!active || active === document.body || (active.closest && active.closest("#skip-form"))) focusTask();
  }

  document.addEventListener("visibilitychange", function () {
    if (!state) return;
    if (document.hidden && state.shownAt !== null) { state.activeMs += performance.now() - state.shownAt; state.shownAt = null; }
    else if (!document.hidden) { state.shownAt = performance.now(); checkHeld(); }
  });
  // A page brought back by Back/Forward from the browser's memory asks whether the task is still ours.
  window.addEventListener("pageshow", function (event) { if (event.persisted) checkHeld(); });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    // htmx answers refused submits with 4xx and the message in the body: show it instead of dropping it.
    if (status >= 400 && status < 500) { event.detail.shouldSwap = true; event.detail.isError = false; }
    // Saved, skipped, or gone (not yours, submitted elsewhere, expired): the stored copy has served.
    if (state && (status < 300 || status === 403 || status === 409 || status === 410)) forget(state.storageKey);
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
