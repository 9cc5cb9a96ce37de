// The result frame: draws one untrusted result (HTML, or a Plotly figure) sent by the page.
// It runs with an opaque origin (sandbox without allow-same-origin, and the `sandbox` CSP
// of its own response), so whatever the result's scripts do, they cannot read the page,
// its storage or its key, and its CSP lets no request leave but this origin's scripts.
"use strict";
(function () {
  const parentWindow = window.parent;
  const STYLE =
    '<meta charset="utf-8"><meta name="color-scheme" content="light dark">' +
    "<style>body{font:14px system-ui,sans-serif;margin:4px}" +
    "table{border-collapse:collapse}th,td{border:1px solid #8886;padding:2px 6px;text-align:right}" +
    "thead th{background:#8882}</style>";
  let done = false;

  function report() {
    const root = document.documentElement;
    const height = Math.max(root ? root.scrollHeight : 0, document.body ? document.body.scrollHeight : 0);
    parentWindow.postMessage({ nsboxFrameHeight: height }, "*");
  }

  function watchSize() {
    if (typeof ResizeObserver === "function" && document.documentElement) {
      new ResizeObserver(report).observe(document.documentElement);
    }
    for (const ms of [30, 200, 1000, 3000]) setTimeout(report, ms);
  }

  function drawHtml(html) {
    // Written as a document, so the result's own scripts run here (and only here).
    document.open();
    document.write("<!doctype html><html><head>" + STYLE + "</head><body>" + html + "</body></html>");
    document.close();
    watchSize();
  }

  function drawPlotly(figure) {
    document.body.innerHTML = "";
    const div = document.createElement("div");
    div.id = "plot";
    document.body.appendChild(div);
    const script = document.createElement("script");
    script.src = "/ui/plotly.min.js";
    script.onload = function () {
      const layout = Object.assign({ autosize: true, height: 420 }, figure.layout || {});
      window.Plotly.newPlot(div, figure.data || [], layout, { responsive: true, displaylogo: false })
        .then(watchSize);
    };
    script.onerror = function () {
      div.textContent = "Plotly's script could not be loaded.";
      watchSize();
    };
    document.head.appendChild(script);
  }

  window.addEventListener("message", function (event) {
    // Only the page that embeds this frame draws in it, and only once.
    if (event.source !== parentWindow || done) return;
    const message = event.data || {};
    if (message.kind === "html" && typeof message.html === "string") {
      done = true;
      drawHtml(message.html);
    } else if (message.kind === "plotly" && message.figure) {
      done = true;
      drawPlotly(message.figure);
    }
  });
  parentWindow.postMessage({ nsboxFrameReady: true }, "*");
})();
