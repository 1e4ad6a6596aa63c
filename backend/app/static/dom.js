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
    var t = Date.parse(iso);
    if (!isFinite(t)) return DASH;
    var seconds = (t - Date.now()) / 1000;
    var unit = UNITS.filter(function (u) { return Math.abs(seconds) >= u[1]; })[0] || UNITS[UNITS.length - 1];
    return relative.format(Math.round(seconds / unit[1]), unit[0]);
  };

  Dash.when = function (iso) {
    var t = Date.parse(iso);
    return isFinite(t) ? new Date(t).toLocaleString() : (iso || DASH);
  };

  /* "5 minutes ago", with the full local time on hover. */
  Dash.timeNode = function (iso) {
    if (!iso) return document.createTextNode(DASH);
    return Dash.h('time', { datetime: iso, title: Dash.when(iso) }, Dash.ago(iso));
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
