// nbgateway dashboard: progressive enhancement only; every page works without it.
"use strict";
(function () {
  // ask before destructive form posts (delete, revoke)
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
  // live view: re-fetch the server-rendered (escaped) fragment every 2 s
  var live = document.getElementById("live");
  if (live && window.fetch) {
    var last = live.innerHTML;
    setInterval(function () {
      fetch(live.getAttribute("data-src"), {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null && html !== last) { live.innerHTML = html; last = html; }
        })
        .catch(function () {});
    }, 2000);
  }
})();
