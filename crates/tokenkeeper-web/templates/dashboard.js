// tokenkeeper's dashboard, optional script: every 30 seconds, while the tab is visible, it reads
// the page again and replaces the parts marked data-live whose numbers changed, in place (no
// reload, no flicker, the scroll position and any open details stay). The page is complete
// without it: with JavaScript off it shows the same numbers as of the last load.
// Served from the page's own origin (the Content-Security-Policy allows nothing else); it adds
// no event handler attributes and runs no inline code.
(function () {
  "use strict";
  var PERIOD_MS = 30000;
  var timer = null;
  var busy = false;

  function ids(root) {
    return Array.prototype.map.call(root.querySelectorAll("[data-card]"), function (e) { return e.id; }).join(" ");
  }

  // Replaces each live part whose content changed; returns how many were replaced.
  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var changed = 0;
    var list = document.getElementById("accounts");
    var fresh = doc.getElementById("accounts");
    if (list && fresh && ids(list) !== ids(fresh)) {
      // Accounts were added or removed: the list is replaced whole (forms included).
      list.innerHTML = fresh.innerHTML;
      changed += 1;
    }
    Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), function (el) {
      var next = doc.getElementById(el.id);
      if (next && next.innerHTML !== el.innerHTML) {
        el.innerHTML = next.innerHTML;
        changed += 1;
      }
    });
    return changed;
  }

  function stop() {
    if (timer !== null) { clearInterval(timer); timer = null; }
    document.documentElement.setAttribute("data-live-script", "stopped");
  }

  // Reads the page again (same query string, so filters and order stay) and updates it.
  function refresh() {
    if (busy) { return Promise.resolve(0); }
    busy = true;
    return fetch(window.location.href, { credentials: "same-origin", headers: { "X-Tokenkeeper-Live": "1" } })
      .then(function (r) {
        // Signed out (sent to the sign-in page) or failing: stop, and leave the page as it is.
        if (!r.ok || r.redirected) { stop(); return 0; }
        return r.text().then(swap);
      })
      .catch(function () { return 0; })
      .then(function (n) { busy = false; return n; });
  }

  window.tokenkeeperLive = { refresh: refresh, stop: stop };
  document.documentElement.setAttribute("data-live-script", "on");
  timer = setInterval(function () { if (!document.hidden) { refresh(); } }, PERIOD_MS);
})();
