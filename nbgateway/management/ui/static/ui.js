// nbgateway dashboard: progressive enhancement only; every page works without it.
"use strict";
(function () {
  // ask before destructive form posts (delete, revoke)
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
  // live view: re-fetch the server-rendered (escaped) fragment when the server
  // says something changed (server-sent events); poll every 2 s when the
  // stream is refused or unavailable
  var live = document.getElementById("live");
  if (live && window.fetch) {
    var last = live.innerHTML;
    var refresh = function () {
      fetch(live.getAttribute("data-src"), {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null && html !== last) { live.innerHTML = html; last = html; }
        })
        .catch(function () {});
    };
    var polling = null;
    var poll = function () {
      live.setAttribute("data-mode", "polling");
      if (polling === null) { polling = setInterval(refresh, 2000); }
    };
    var events = live.getAttribute("data-events");
    if (events && window.EventSource) {
      var source = new EventSource(events);
      source.addEventListener("open", function () {
        live.setAttribute("data-mode", "events");
        if (polling !== null) { clearInterval(polling); polling = null; }
        refresh();  // whatever changed while (re)connecting
      });
      source.addEventListener("change", refresh);
      source.addEventListener("error", function () {
        // CLOSED: refused (e.g. 503, too many streams); else it reconnects itself
        if (source.readyState === 2) { poll(); }
      });
    } else {
      poll();
    }
  }
})();
