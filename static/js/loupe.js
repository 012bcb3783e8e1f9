// Site-wide behaviour that htmx attributes cannot express. Screen-specific keyboard handling lives
// in its own file (annotate.js, review.js), loaded only by the page that needs it.
(function () {
  "use strict";
  // Keep the CSRF token fresh after htmx swaps a page fragment that carries a new one.
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector("meta[name=csrf-token]");
    if (meta) event.detail.headers["X-CSRFToken"] = meta.content;
  });
})();
