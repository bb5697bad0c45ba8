// thrifty dashboard: draws the charts from the JSON the server embeds in each page.
(function () {
  "use strict";
  var palette = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
                 "#f97316", "#64748b", "#14b8a6", "#a855f7"];
  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  // The money rule of thrifty/reports/format.py: to the cent, or three significant digits below it.
  function usd(v) {
    if (v === null || v === undefined) return "-";
    return Math.abs(v) >= 0.01 || v === 0 ? "$" + v.toFixed(2) : "$" + Number(v.toPrecision(3)).toFixed(Math.min(9, 2 - Math.floor(Math.log10(Math.abs(v)))));
  }
  if (window.Chart) {
    Chart.defaults.animation = false;
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.font.family = "system-ui, sans-serif";
  }
  function chart(id, config) {
    var el = document.getElementById(id);
    if (el && window.Chart) new Chart(el, config);
  }

  var d = data("chart-data");
  if (d) {
    chart("chart-spend", {
      type: "bar",
      data: { labels: d.labels, datasets: d.stacked.map(function (s, i) {
        return { label: s.label, data: s.data, backgroundColor: s.color || palette[i % palette.length], stack: "spend" };
      }) },
      options: { scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } },
                 plugins: { tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + usd(c.parsed.y); } } },
                            legend: { position: "bottom", labels: { boxWidth: 12 } } } }
    });
    chart("chart-mix", {
      type: "doughnut",
      data: { labels: d.mix.labels, datasets: [{ data: d.mix.data, backgroundColor: d.mix.colors || palette }] },
      options: { plugins: { legend: { position: "right", labels: { boxWidth: 12 } } } }
    });
    chart("chart-price", {
      type: "line",
      data: { labels: d.labels, datasets: [
        { label: "paid", data: d.price, borderColor: palette[0], backgroundColor: palette[0], spanGaps: true },
        { label: "all-frontier", data: d.frontier_price, borderColor: palette[3], borderDash: [6, 4], spanGaps: true }] },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: "USD / 1M tokens" } } } }
    });
    chart("chart-savings", {
      type: "line",
      data: { labels: d.labels, datasets: [
        { label: "all-frontier", data: d.frontier_cum, borderColor: palette[3], fill: false },
        { label: "paid with routing", data: d.paid_cum, borderColor: palette[0], backgroundColor: "rgba(16,185,129,0.2)", fill: "-1" }] },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: "USD" } } } }
    });
  }

  var budgets = data("budget-data");
  if (budgets && window.Chart) {
    document.querySelectorAll("canvas.burndown").forEach(function (el) {
      var b = budgets[el.dataset.budget];
      if (!b) return;
      var sets = [{ label: "spent", data: b.spent.map(function (p) { return { x: p[0], y: p[1] }; }), borderColor: palette[0] }];
      if (b.projection.length) sets.push({ label: "projection", data: b.projection.map(function (p) { return { x: p[0], y: p[1] }; }),
                                             borderColor: palette[1], borderDash: [6, 4] });
      var xs = b.spent.map(function (p) { return p[0]; }).concat(b.projection.map(function (p) { return p[0]; }));
      if (b.end) xs.push(b.end);
      var lo = Math.min.apply(null, xs), hi = Math.max.apply(null, xs);
      var short = hi - lo < 3 * 86400000;  // under three days: show the time of day too
      sets.push({ label: "limit", data: [{ x: lo, y: b.limit }, { x: hi, y: b.limit }], borderColor: palette[3], pointRadius: 0 });
      new Chart(el, { type: "line", data: { datasets: sets },
        options: { parsing: false, scales: {
          x: { type: "linear", min: lo, max: hi, ticks: { callback: function (v) {
            var iso = new Date(v).toISOString();
            return short ? iso.slice(5, 10) + " " + iso.slice(11, 16) : iso.slice(0, 10); } } },
          y: { beginAtZero: true, title: { display: true, text: "USD" } } } } });
    });
  }

  var live = data("live-data");
  if (live) {
    var liveChart = null;
    var draw = function (l) {
      var mix = document.querySelector("#live-mix tbody"), recent = document.querySelector("#live-recent tbody");
      mix.innerHTML = ""; recent.innerHTML = "";
      l.mix.forEach(function (m) {
        var tr = mix.insertRow();
        [m.model, m.requests, (100 * m.share).toFixed(1) + "%", usd(m.cost_nanos / 1e9)].forEach(function (v) { tr.insertCell().textContent = v; });
      });
      l.recent.forEach(function (r) {
        var tr = recent.insertRow();
        [new Date(r.ts * 1000).toISOString().slice(11, 19), r.key_id || "", r.team_id || "", r.requested || "", r.served || "-",
         ((r.reason || "").split(": ")[1] || r.reason || ""), usd(r.cost_nanos / 1e9), r.latency_ms ? r.latency_ms.toFixed(0) + " ms" : "-", r.status]
          .forEach(function (v) { tr.insertCell().textContent = v; });
      });
      var labels = l.mix.map(function (m) { return m.model; }), values = l.mix.map(function (m) { return m.requests; });
      var colors = l.mix.map(function (m, i) { return m.color || palette[i % palette.length]; });
      if (!window.Chart) return;
      if (liveChart) { liveChart.data.labels = labels; liveChart.data.datasets[0].data = values;
                       liveChart.data.datasets[0].backgroundColor = colors; liveChart.update(); }
      else liveChart = new Chart(document.getElementById("chart-live"), { type: "doughnut",
        data: { labels: labels, datasets: [{ data: values, backgroundColor: colors }] },
        options: { plugins: { legend: { position: "right", labels: { boxWidth: 12 } } } } });
    };
    draw(live);
    setInterval(function () {
      fetch("api/live", { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (l) { if (l) draw(l); }).catch(function () {});
    }, 5000);
  }
})();
