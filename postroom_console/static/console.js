// Live updates: the page listens to the console's /events (Server-Sent Events fed by the
// coordinator's WatchEvents) and, when something it shows changes, htmx re-fetches the page
// and swaps its #live region. Without JavaScript the pages are complete; reload to update.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  if (!status || !window.EventSource) { return; }
  var source = new EventSource(status.getAttribute("data-events"));
  var pending = null;
  status.textContent = "Live: this page updates by itself.";
  source.addEventListener("change", function () {
    if (pending) { return; } // a burst of events is one refresh
    pending = setTimeout(function () {
      pending = null;
      if (window.htmx) { htmx.trigger(document.body, "postroom:changed"); }
    }, 150);
  });
  source.addEventListener("stopped", function (e) {
    status.textContent = "Live updates stopped: " + JSON.parse(e.data).reason + ". Reload the page.";
    source.close();
  });
  source.onerror = function () {
    status.textContent = "Live updates interrupted; reconnecting…";
  };
  source.onopen = function () {
    status.textContent = "Live: this page updates by itself.";
  };
  document.body.addEventListener("htmx:afterSwap", function () {
    document.body.setAttribute("data-refreshed", String(Date.now()));
  });
})();
