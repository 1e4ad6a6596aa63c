/* Small DOM and formatting helpers shared by the dashboard's scripts (window.Dash).
   Everything from the API reaches the page through `h` and `fill`, as text nodes, never
   as markup: an alert message or a reason cannot inject anything. */
(function () {
  'use strict';

  var Dash = window.Dash = window.Dash || {};

  // The badge words for GET /ml/models `state` (backend/ml/monitoring/health.py decides
  // the state; the page only names it), in the order of that module's precedence.
  Dash.STATES = {
    no_version: 'No version', retraining: 'Retraining', training: 'Training',
    cooling_down: 'Cooling down', degraded: 'Degraded', watch: 'Watch',
    estimated_below_threshold: 'Estimated below threshold',
    below_threshold: 'Below threshold', healthy: 'Healthy'
  };
  var DASH = '\u2014';

  Dash.$ = function (id) { return document.getElementById(id); };

  function append(node, children) {
    children.forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  /* h(tag, attrs, ...children): `class`, `on<event>` handlers, other attributes; a false
     or missing attribute value leaves the attribute out. */
  Dash.h = function (tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === 'class') node.className = value;
      else if (key.slice(0, 2) === 'on') node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : value);
    });
    return append(node, Array.prototype.slice.call(arguments, 2));
  };

  /* fill(node, ...children): replace what the node holds. */
  Dash.fill = function (node) {
    node.textContent = '';
    return append(node, Array.prototype.slice.call(arguments, 1));
  };

  /* fact(term, value): a <dt>/<dd> pair, for fill(dl, ...pairs). */
  Dash.fact = function (term, value) {
    return [Dash.h('dt', {}, term), Dash.h('dd', {}, value)];
  };

  var relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  var UNITS = [['year', 31536000], ['month', 2592000], ['week', 604800], ['day', 86400],
    ['hour', 3600], ['minute', 60], ['second', 1]];

  Dash.ago = function (iso) {
    var t = Dash.instant(iso);
    if (!isFinite(t)) return DASH;
    var seconds = (t - Date.now()) / 1000;
    var unit = UNITS.filter(function (u) { return Math.abs(seconds) >= u[1]; })[0] || UNITS[UNITS.length - 1];
    return relative.format(Math.round(seconds / unit[1]), unit[0]);
  };

  // ---- times: one format, in the training time zone -------------------------------------

  /* The zone every time is shown in: TRAINING_TIMEZONE, as GET /ml/training/status tells
     it (`timezone`); set on every poll before anything is drawn. */
  Dash.timeZone = 'UTC';
  var formats = {};

  function formatter(locale, zone, options) {
    var key = locale + ' ' + zone + ' ' + JSON.stringify(options);
    if (!formats[key]) {
      formats[key] = new Intl.DateTimeFormat(locale, Object.assign({ timeZone: zone }, options));
    }
    return formats[key];
  }

  function zoneOrUtc() {
    try {
      formatter('en-US', Dash.timeZone, {});
      return Dash.timeZone;
    } catch (err) {  // a zone this browser does not know: UTC, named as such
      return 'UTC';
    }
  }

  var NUMERIC = { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit',
    minute: '2-digit', second: '2-digit', hourCycle: 'h23' };

  function wallParts(t, zone) {
    var parts = {};
    formatter('en-US', zone, NUMERIC).formatToParts(new Date(t)).forEach(function (p) {
      parts[p.type] = p.value;
    });
    return parts;
  }

  /* The zone's offset from UTC at instant t, in ms (IST: +5.5 h). */
  Dash.zoneOffset = function (t) {
    var p = wallParts(t, zoneOrUtc());
    var wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
    return wall - Math.floor(t / 1000) * 1000;
  };

  /* The zone's short name at t: IST, CET, EDT, UTC; GMT+4 where there is no name. The
     name depends on the locale that has one, so ask a few. */
  function zoneName(t, zone) {
    var names = ['en-US', 'en-GB', 'en-IN'].map(function (locale) {
      var part = formatter(locale, zone, { timeZoneName: 'short' }).formatToParts(new Date(t))
        .filter(function (p) { return p.type === 'timeZoneName'; })[0];
      return part ? part.value : zone;
    });
    return names.filter(function (n) { return !/[0-9]/.test(n); })[0] || names[0];
  }

  /* A time from the API as an instant (ms): an ISO time with a zone or Z is one already;
     one without (`next_run`, "2026-12-02 02:00:00") is a wall time in the training zone. */
  Dash.instant = function (value) {
    if (typeof value === 'number') return value;
    if (typeof value !== 'string') return NaN;
    var wall = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$/.exec(value);
    if (!wall) return Date.parse(value);
    var guess = Date.UTC(+wall[1], +wall[2] - 1, +wall[3], +wall[4], +wall[5], +(wall[6] || 0));
    var first = guess - Dash.zoneOffset(guess);
    return guess - Dash.zoneOffset(first);  // again, in case an offset change lies between
  };

  /* THE way the page shows a time: "2026-12-01 08:30 IST", in the training time zone. */
  Dash.when = function (value) {
    var t = Dash.instant(value);
    if (!isFinite(t)) return value || DASH;
    var zone = zoneOrUtc();
    var p = wallParts(t, zone);
    return p.year + '-' + p.month + '-' + p.day + ' ' + (p.hour === '24' ? '00' : p.hour) + ':'
      + p.minute + ' ' + zoneName(t, zone);
  };

  /* A time as a <time> element: the time (Dash.when), "5 minutes ago" on hover. */
  Dash.timeNode = function (value) {
    var t = Dash.instant(value);
    if (!isFinite(t)) return document.createTextNode(value || DASH);
    var iso = new Date(t).toISOString();
    return Dash.h('time', { datetime: iso, title: Dash.ago(iso) }, Dash.when(t));
  };

  Dash.num = function (value, digits) {
    return typeof value === 'number' && isFinite(value)
      ? value.toFixed(digits === undefined ? 3 : digits) : DASH;
  };

  Dash.label = function (name) {
    var words = name.replace(/_/g, ' ');
    return words.charAt(0).toUpperCase() + words.slice(1);
  };

  Dash.badge = function (state, text) {
    return Dash.h('span', { class: 'badge state-' + state }, text || Dash.STATES[state] || state);
  };

  Dash.listNames = function (names, shown) {
    var text = names.slice(0, shown).join(', ');
    return names.length > shown ? text + ' +' + (names.length - shown) + ' more' : text;
  };
})();
