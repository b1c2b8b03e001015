// Outlink portal: the device page's telemetry charts (uPlot, vendored in static/vendor/uplot).
// Loaded from 'self' only (CSP forbids inline script). Metric names and labels come from
// agents: they reach the page through textContent (and uPlot's own textContent) only.
//
// Every chart shows one metric over the shared time window: a range button (1h ... 1y) or
// a zoom (drag across any chart). Data: GET <series-url>?metric=&range= (or &start=&end=)
// &points=<chart width>, columnar {t, avg, min, max}; the server picks raw samples or
// hourly aggregates. Gaps longer than three times the usual spacing are drawn as gaps.
"use strict";

(function () {
  const REFRESH_MS = 60000;
  const CHART_HEIGHT = 220;
  const GAP_FACTOR = 3;
  const MIN_DRAG_PX = 5;
  const STROKE = "#1f5fbf";
  const BAND = "rgba(31, 95, 191, 0.12)";
  const EDGE = "rgba(31, 95, 191, 0.35)";
  // uPlot's time-axis table (tick step, label, then the extra line when the year, month,
  // day, hour, minute or second changes): 24-hour clock and day-month, like the portal.
  const TIME_AXIS = [
    [86400 * 365, "{YYYY}", null, null, null, null, null, null, 1],
    [86400 * 28, "{MMM}", "\n{YYYY}", null, null, null, null, null, 1],
    [86400, "{D} {MMM}", "\n{YYYY}", null, null, null, null, null, 1],
    [3600, "{HH}:{mm}", "\n{D} {MMM}", null, "\n{D} {MMM}", null, null, null, 1],
    [60, "{HH}:{mm}", "\n{D} {MMM}", null, "\n{D} {MMM}", null, null, null, 1],
    [1, ":{ss}", "\n{D} {MMM} {HH}:{mm}", null, "\n{D} {MMM} {HH}:{mm}", null, "\n{HH}:{mm}", null, 1],
  ];

  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function number(value, unit) {
    if (value === null || value === undefined) return "–";
    const magnitude = Math.abs(value);
    const digits = magnitude >= 100 || Number.isInteger(value) ? 0 : magnitude >= 10 ? 1 : 2;
    const text = value.toLocaleString("en", {maximumFractionDigits: digits});
    return unit ? text + (unit === "%" ? "%" : " " + unit) : text;
  }

  function utc(seconds) {
    return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ");
  }

  // Insert nulls where the device sent nothing for a while, so the line breaks there.
  function withGaps(series) {
    const t = series.t;
    if (t.length < 3) return [t, series.avg, series.min, series.max];
    const steps = [];
    for (let i = 1; i < t.length; i++) steps.push(t[i] - t[i - 1]);
    steps.sort((a, b) => a - b);
    const limit = Math.max(steps[Math.floor(steps.length / 2)], series.bucket) * GAP_FACTOR;
    const out = [[], [], [], []];
    for (let i = 0; i < t.length; i++) {
      if (i > 0 && t[i] - t[i - 1] > limit) {
        out[0].push(t[i - 1] + series.bucket);
        out[1].push(null); out[2].push(null); out[3].push(null);
      }
      out[0].push(t[i]); out[1].push(series.avg[i]); out[2].push(series.min[i]);
      out[3].push(series.max[i]);
    }
    return out;
  }

  function Chart(box, panel) {
    this.box = box;
    this.panel = panel;
    this.select = box.querySelector("[data-metric]");
    this.target = box.querySelector("[data-chart]");
    this.resolution = box.querySelector("[data-resolution]");
    this.plot = null;
    this.span = [0, 1];
    this.unit = "";
    this.request = 0;
    this.select.addEventListener("change", () => this.load());
  }

  Chart.prototype.width = function () {
    return Math.max(200, Math.floor(this.target.clientWidth || this.box.clientWidth || 600));
  };

  Chart.prototype.message = function (text, state) {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    const p = document.createElement("p");
    p.className = "chart-message muted";
    p.textContent = text;
    this.target.replaceChildren(p);
    this.target.dataset.state = state;
    this.target.dataset.points = "0";
  };

  Chart.prototype.load = function () {
    const request = ++this.request;
    const url = new URL(this.panel.url, window.location.href);
    url.searchParams.set("metric", this.select.value);
    url.searchParams.set("points", String(this.width()));
    const win = this.panel.window;
    if (win.range) url.searchParams.set("range", win.range);
    else { url.searchParams.set("start", win.start.toFixed(3)); url.searchParams.set("end", win.end.toFixed(3)); }
    this.target.dataset.state = "loading";
    fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then((r) => r.json().then((body) => ({ok: r.ok, body: body})))
      .then((answer) => {
        if (request !== this.request) return;  // a newer request superseded this one
        if (!answer.ok) { this.message(answer.body.message || "The series could not be loaded.", "error"); return; }
        this.draw(answer.body);
      })
      .catch(() => { if (request === this.request) this.message("The series could not be loaded.", "error"); });
  };

  Chart.prototype.draw = function (series) {
    this.unit = series.unit;
    this.resolution.textContent = series.resolution === "raw"
      ? "samples" : "hourly means, band min–max";
    if (!series.t.length) {
      this.message("No data in this time range.", "empty");
      return;
    }
    const data = withGaps(series);
    this.span = [series.start, series.end];  // the x axis shows the window asked for
    if (this.plot) this.plot.setData(data);
    else {
      this.target.replaceChildren();
      this.plot = new uPlot(this.options(), data, this.target);
    }
    this.target.dataset.state = "ready";
    this.target.dataset.points = String(series.t.length);
    this.target.dataset.series = series.metric;
  };

  Chart.prototype.options = function () {
    const unit = () => this.unit;
    const value = (u, v) => number(v, unit());
    return {
      width: this.width(),
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: {x: {time: true, range: () => this.span}},
      series: [
        {value: (u, v) => (v === null ? "–" : utc(v) + " UTC")},
        {label: "mean", stroke: STROKE, width: 2, value: value, points: {show: false}},
        {label: "min", stroke: EDGE, width: 1, value: value, points: {show: false}},
        {label: "max", stroke: EDGE, width: 1, value: value, points: {show: false}},
      ],
      bands: [{series: [3, 2], fill: BAND}],
      axes: [
        {stroke: "#6b7585", grid: {stroke: "#eef0f3"}, ticks: {stroke: "#e2e6ec"}, values: TIME_AXIS},
        {stroke: "#6b7585", grid: {stroke: "#eef0f3"}, ticks: {stroke: "#e2e6ec"}, size: 60,
         values: (u, splits) => splits.map((v) => number(v, unit()))},
      ],
      cursor: {drag: {x: true, y: false, setScale: false}},
      hooks: {
        setSelect: [(u) => {
          if (u.select.width >= MIN_DRAG_PX) {
            const start = u.posToVal(u.select.left, "x");
            const end = u.posToVal(u.select.left + u.select.width, "x");
            this.panel.zoom(start, end);
          }
          u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
        }],
      },
    };
  };

  Chart.prototype.resize = function () {
    if (this.plot) this.plot.setSize({width: this.width(), height: CHART_HEIGHT});
  };

  function Panel(root) {
    this.root = root;
    this.url = root.dataset.seriesUrl;
    this.window = {range: root.dataset.range, start: null, end: null};
    this.buttons = Array.from(root.querySelectorAll("[data-range-button]"));
    this.reset = root.querySelector("[data-zoom-reset]");
    this.label = root.querySelector("[data-range-label]");
    this.charts = Array.from(root.querySelectorAll("[data-chart-box]")).map((box) => new Chart(box, this));
    this.buttons.forEach((button) => button.addEventListener("click", () => this.setRange(button.dataset.rangeButton)));
    if (this.reset) this.reset.addEventListener("click", () => this.setRange(this.lastRange || root.dataset.range));
  }

  Panel.prototype.show = function () {
    const range = this.window.range;
    this.buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.rangeButton === range)));
    if (this.reset) this.reset.hidden = Boolean(range);
    if (this.label) {
      this.label.textContent = range ? "Last " + range
        : "Zoomed: " + utc(this.window.start) + " – " + utc(this.window.end);
    }
    this.root.dataset.window = range || "zoom";
  };

  Panel.prototype.setRange = function (range) {
    this.window = {range: range, start: null, end: null};
    this.lastRange = range;
    this.show();
    this.load();
  };

  Panel.prototype.zoom = function (start, end) {
    if (!(end > start)) return;
    if (this.window.range) this.lastRange = this.window.range;
    this.window = {range: null, start: start, end: end};
    this.show();
    this.load();
  };

  Panel.prototype.load = function () {
    this.charts.forEach((chart) => chart.load());
  };

  onReady(function () {
    const root = document.querySelector("[data-telemetry]");
    if (!root || typeof uPlot === "undefined") return;
    const panel = new Panel(root);
    if (!panel.charts.length) return;
    panel.show();
    panel.load();
    window.setInterval(() => {
      if (panel.window.range && document.visibilityState === "visible") panel.load();
    }, REFRESH_MS);
    let pending = 0;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(() => panel.charts.forEach((chart) => chart.resize()), 150);
    });
  });
})();
