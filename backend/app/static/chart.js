/* One model's accuracy over time as inline SVG (GET /ml/models/{name}/timeline): the
   holdout score of each version, the live score of each check, the threshold, and a
   marker for each retrain, promotion, rollback and alert. Drawn at the width of its box,
   one SVG unit to a CSS pixel, so text is never stretched; the page redraws on resize.
   Exposes window.TimelineChart.render(box, timeline). */
(function () {
  'use strict';

  var NS = 'http://www.w3.org/2000/svg';
  var MINUTE = 60e3;
  var HOUR = 60 * MINUTE;
  var DAY = 24 * HOUR;
  // Tick spacings to choose from, so labels fall on round times whatever the span.
  var STEPS = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 3 * HOUR, 6 * HOUR,
    12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 182 * DAY, 365 * DAY];
  var LEGEND = [
    ['training', 'Version score (holdout)'], ['live', 'Live score (checks)'],
    ['estimated', 'Estimated (labels pending), 95% interval'],
    ['realized', 'Realized once labels arrived'],
    ['threshold', 'Threshold'], ['promotion', 'Promotion'], ['rollback', 'Rollback'],
    ['retrain', 'Retrain'], ['alert', 'Alert']
  ];

  function svg(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function linear(d0, d1, r0, r1) {
    var k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
    return function (v) { return Math.round((r0 + (v - d0) * k) * 10) / 10; };
  }

  /* An axis label in the training time zone: the day (MM-DD) or the time (HH:MM) of
     Dash.when's format. */
  function stamp(t, withDay) {
    var shown = window.Dash.when(t);  // "2026-12-01 08:30 IST"
    return withDay ? shown.slice(5, 10) : shown.slice(11, 16);
  }

  function full(t) { return window.Dash.when(t); }

  /* The score range shown: a little air around the data and the threshold, in steps of
     0.05, kept within [0, 1] unless a score (an r2 can be negative) lies outside. */
  function scoreRange(scores) {
    var min = Math.min.apply(null, scores);
    var max = Math.max.apply(null, scores);
    var lo = Math.floor((min - 0.03) * 20) / 20;
    var hi = Math.ceil((max + 0.03) * 20) / 20;
    if (min >= 0) lo = Math.max(0, lo);
    if (max <= 1) hi = Math.min(1, hi);
    if (hi - lo < 0.1) {
      hi = Math.min(max <= 1 ? 1 : hi, lo + 0.1);
      lo = hi - 0.1;
    }
    return [lo, hi];
  }

  function marker(kind, x, y, parent) {
    var s = 5;
    if (kind === 'promotion') {
      return svg('path', { d: 'M' + x + ' ' + (y - s) + 'L' + (x + s) + ' ' + (y + s) + 'L' + (x - s) + ' ' + (y + s) + 'Z' }, parent);
    }
    if (kind === 'rollback') {
      return svg('path', { d: 'M' + x + ' ' + (y + s) + 'L' + (x + s) + ' ' + (y - s) + 'L' + (x - s) + ' ' + (y - s) + 'Z' }, parent);
    }
    if (kind === 'retrain') {
      return svg('path', { d: 'M' + x + ' ' + (y - s) + 'L' + (x + s) + ' ' + y + 'L' + x + ' ' + (y + s) + 'L' + (x - s) + ' ' + y + 'Z' }, parent);
    }
    return svg('circle', { cx: x, cy: y, r: 4 }, parent);
  }

  function legend() {
    var list = document.createElement('ul');
    list.className = 'legend';
    LEGEND.forEach(function (item) {
      var li = document.createElement('li');
      var key = document.createElement('span');
      key.className = 'key key-' + item[0];
      li.appendChild(key);
      li.appendChild(document.createTextNode(item[1]));
      list.appendChild(li);
    });
    return list;
  }

  /* Estimates as their own dashed series with each interval as a bar, never joined to the
     scores; the realized score, once its labels arrived, as a dot beside it, linked by the
     estimation error. */
  function drawEstimates(estimates, x, y, root) {
    if (!estimates.length) return;
    var series = estimates.slice().sort(function (a, b) { return a.t - b.t; });
    var g = svg('g', { class: 'series series-estimated' }, root);
    svg('polyline', {
      points: series.map(function (e) { return x(e.t) + ',' + y(e.estimated_value); }).join(' ')
    }, g);
    var done = svg('g', { class: 'series series-realized' }, root);
    series.forEach(function (e) {
      svg('line', { class: 'interval', x1: x(e.t), x2: x(e.t), y1: y(e.estimated_low), y2: y(e.estimated_high) }, g);
      var dot = svg('circle', { cx: x(e.t), cy: y(e.estimated_value), r: 3 }, g);
      svg('title', {}, dot, 'estimated ' + full(e.t) + ': ' + e.estimated_value.toFixed(4) + ' ['
        + e.estimated_low.toFixed(4) + ', ' + e.estimated_high.toFixed(4) + '] on '
        + e.estimated_rows + ' rows awaiting labels' + (e.version ? ' (' + e.version + ')' : ''));
      if (typeof e.realized_value !== 'number') return;
      svg('line', { class: 'error', x1: x(e.t), x2: x(e.t), y1: y(e.estimated_value), y2: y(e.realized_value) }, done);
      var real = svg('circle', { cx: x(e.t), cy: y(e.realized_value), r: 3 }, done);
      svg('title', {}, real, 'realized ' + e.realized_value.toFixed(4) + ' once labels arrived; '
        + 'estimation error ' + e.estimation_error.toFixed(4));
    });
  }

  function render(box, timeline) {
    box.textContent = '';
    var parse = function (item) { return Object.assign({ t: window.Dash.instant(item.time) }, item); };
    var ok = function (item) { return isFinite(item.t); };
    var points = timeline.points.map(parse).filter(ok);
    var events = timeline.events.map(parse).filter(ok);
    var estimates = (timeline.estimates || []).map(parse).filter(ok);
    if (!points.length && !events.length && !estimates.length) {
      var empty = document.createElement('p');
      empty.className = 'muted';
      empty.textContent = 'Nothing to chart yet: no version has been trained.';
      box.appendChild(empty);
      return;
    }
    var width = Math.max(240, Math.floor(box.clientWidth || 600));
    var height = width < 480 ? 190 : 250;
    var m = { left: 42, right: 12, top: 20, bottom: 26 };
    var times = points.concat(events, estimates).map(function (p) { return p.t; });
    var t0 = Math.min.apply(null, times);
    var t1 = Math.max.apply(null, times);
    var pad = Math.max((t1 - t0) * 0.04, MINUTE);
    t0 -= pad;
    t1 += pad;
    var guessed = [];
    estimates.forEach(function (e) {
      guessed.push(e.estimated_low, e.estimated_high);
      if (typeof e.realized_value === 'number') guessed.push(e.realized_value);
    });
    var range = scoreRange(points.map(function (p) { return p.score; })
      .concat(guessed, [timeline.threshold]));
    var x = linear(t0, t1, m.left, width - m.right);
    var y = linear(range[0], range[1], height - m.bottom, m.top);
    var root = svg('svg', {
      class: 'chart', width: width, height: height, viewBox: '0 0 ' + width + ' ' + height,
      role: 'img', 'aria-label': timeline.model + ': ' + timeline.metric + ' over time'
    });

    var grid = svg('g', { class: 'grid' }, root);
    var step = range[1] - range[0] > 0.4 ? 0.1 : 0.05;
    for (var v = Math.ceil(range[0] / step - 1e-9) * step; v <= range[1] + 1e-9; v += step) {
      svg('line', { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }, grid);
      svg('text', { x: m.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, grid, v.toFixed(2));
    }
    var span = t1 - t0;
    var most = Math.max(2, Math.floor((width - m.left - m.right) / 90));
    var tick = STEPS.filter(function (s) { return span / s <= most; })[0] || STEPS[STEPS.length - 1];
    var zone = -window.Dash.zoneOffset(t0);  // round to midnights and hours of the training zone
    for (var t = Math.ceil((t0 - zone) / tick) * tick + zone; t <= t1; t += tick) {
      svg('line', { x1: x(t), x2: x(t), y1: m.top, y2: height - m.bottom, class: 'vgrid' }, grid);
      svg('text', { x: x(t), y: height - 8, 'text-anchor': 'middle' }, grid, stamp(t, tick >= DAY));
    }

    var th = y(timeline.threshold);
    svg('line', { class: 'threshold', x1: m.left, x2: width - m.right, y1: th, y2: th }, root);
    svg('text', { class: 'threshold-label', x: width - m.right, y: th - 4, 'text-anchor': 'end' },
      root, 'threshold ' + timeline.threshold.toFixed(2));

    events.forEach(function (e) {
      var g = svg('g', { class: 'event event-' + e.kind }, root);
      svg('title', {}, g, e.kind + ', ' + full(e.t) + (e.version ? ' (' + e.version + ')' : '') + ': ' + e.detail);
      svg('line', { x1: x(e.t), x2: x(e.t), y1: m.top, y2: height - m.bottom }, g);
      marker(e.kind, x(e.t), m.top - 4, g);  // along the top edge, above the lines
    });

    ['training', 'live'].forEach(function (kind) {
      var series = points.filter(function (p) { return p.kind === kind; })
        .sort(function (a, b) { return a.t - b.t; });
      if (!series.length) return;
      var g = svg('g', { class: 'series series-' + kind }, root);
      svg('polyline', {
        points: series.map(function (p) { return x(p.t) + ',' + y(p.score); }).join(' ')
      }, g);
      series.forEach(function (p) {
        var serving = kind === 'training' && p.version === timeline.aliases.production;
        var dot = svg('circle', {
          cx: x(p.t), cy: y(p.score), r: kind === 'training' ? (serving ? 6 : 4) : 2.5,
          class: serving ? 'serving' : ''
        }, g);
        svg('title', {}, dot, (kind === 'training' ? (p.version || '') + ' trained ' : 'live check ')
          + full(p.t) + ': ' + p.score.toFixed(4)
          + (kind === 'live' && p.version ? ' (' + p.version + ')' : '')
          + (serving ? ', serving now' : ''));
      });
    });
    drawEstimates(estimates, x, y, root);
    box.appendChild(root);
    box.appendChild(legend());
  }

  window.TimelineChart = { render: render };
})();
