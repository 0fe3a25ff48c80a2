// The console's only script, compiled into the binary and served from the
// console itself (the Content-Security-Policy allows scripts from 'self' only).
// Hand-written, a few dozen lines, rather than a library: EventSource and fetch
// do the work, and every page stays usable without it (Refresh links, a Preview
// button).
"use strict";
(function () {
  // Runs: the live tail. The server sends whole rows (HTML it rendered and
  // escaped); a row replaces the one with its id, or goes on top.
  var table = document.querySelector("table[data-tail]");
  if (table && window.EventSource) {
    var body = table.tBodies[0];
    var status = document.getElementById("tail-status");
    var say = function (text) { if (status) status.textContent = text; };
    var source = new EventSource(table.getAttribute("data-tail"));
    source.addEventListener("run", function (event) {
      var holder = document.createElement("tbody");
      holder.innerHTML = event.data;
      var row = holder.firstElementChild;
      if (!row || !row.id) return;
      var old = document.getElementById(row.id);
      if (old) old.replaceWith(row); else body.insertBefore(row, body.firstElementChild);
      var empty = document.getElementById("no-runs");
      if (empty) empty.remove();
    });
    source.onopen = function () { say("Live: new runs appear as they come."); };
    source.onerror = function () { say("Live updates paused, reconnecting; Refresh reloads."); };
  }

  // Tools: the live request preview. The form goes to the preview endpoint as
  // typed (debounced); the server answers the preview's HTML.
  var form = document.querySelector("form[data-preview]");
  var preview = document.getElementById("preview");
  if (form && preview && window.fetch) {
    var timer = null;
    var update = function () {
      var data = new URLSearchParams(new FormData(form));
      fetch(form.getAttribute("data-preview"), { method: "POST", body: data, credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) { preview.innerHTML = html; })
        .catch(function () {});
    };
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(update, 300);
    });
  }
})();
