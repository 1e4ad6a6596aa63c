/* The model cards, in their groups (window.Dash.models).

   The cards are built once, from the first GET /ml/models, and updated in place on every
   poll, so an opened chart or a half-confirmed rollback survives the next poll. Opening a
   card loads its timeline (GET /ml/models/{name}/timeline) for the chart; an open card's
   timeline is reloaded on each poll and redrawn only when it changed. Each card's element
   id is `model-<name>`, the anchor alerts link to. */
(function () {
  'use strict';

  var Dash = window.Dash;
  var h = Dash.h;
  var fill = Dash.fill;
  var num = Dash.num;
  var GROUP_TITLES = { prediction: 'Prediction', optimization: 'Optimization',
    risk_decision: 'Risk & decision', advanced: 'Advanced' };
  var groups = [];  // [name, title], in the order the API lists each group's first model
  var PSI_ALERT = 0.25;  // the monitor's drift alert level
  var cards = {};
  var summaries = {};

  // The groups are the API's: a model of a group not named here adds a section after the
  // known ones, titled by its name.
  function groupsOf(models) {
    var known = Object.keys(GROUP_TITLES);
    var names = [];
    models.forEach(function (m) { if (names.indexOf(m.group) < 0) names.push(m.group); });
    names.sort(function (a, b) {
      var i = known.indexOf(a), j = known.indexOf(b);
      return (i < 0 ? known.length : i) - (j < 0 ? known.length : j) || (a < b ? -1 : 1);
    });
    return names.map(function (name) {
      return [name, GROUP_TITLES[name] || name.replace(/_/g, ' ')
        .replace(/^./, function (c) { return c.toUpperCase(); })];
    });
  }

  function build(models) {
    var sections = Dash.$('groups');
    sections.textContent = '';
    groups = groupsOf(models);
    groups.forEach(function (group) {
      var grid = h('div', { class: 'group-grid' });
      summaries[group[0]] = h('span', { class: 'group-summary' });
      sections.appendChild(h('section', { class: 'group', 'aria-label': group[1] + ' models' },
        h('h3', {}, group[1], ' ', summaries[group[0]]), grid));
      models.filter(function (m) { return m.group === group[0]; })
        .forEach(function (m) { grid.appendChild(buildCard(m.name)); });
    });
  }

  function buildCard(name) {
    var card = cards[name] = {
      name: name, open: false, confirming: false, drawn: null, timeline: null,
      root: h('article', { class: 'model', id: 'model-' + name }),
      badge: h('span', { class: 'badge' }),
      facts: h('dl', { class: 'model-facts' }),
      detail: h('div', { class: 'model-detail', id: 'detail-' + name, hidden: true }),
      chart: h('div', { class: 'chart-box' }),
      actions: h('div', { class: 'model-actions' }),
      message: h('p', { class: 'message', 'aria-live': 'polite', hidden: true }),
      events: h('ul', { class: 'events' })
    };
    card.head = h('button', {
      type: 'button', class: 'model-head', 'aria-expanded': 'false',
      'aria-controls': 'detail-' + name, onclick: function () { toggle(name); }
    }, h('span', { class: 'model-title' }, h('span', { class: 'model-name' }, Dash.label(name)),
      h('code', {}, name)), card.badge);
    card.detail.append(card.chart, card.actions, card.message, card.events);
    card.root.append(card.head, card.facts, card.detail);
    return card.root;
  }

  /* The holdout score as a bar, with the threshold as a tick across it. Scores are raw (an
     r2 can be far below zero): only the drawing is clamped to the bar, the number shown
     beside it is the score itself. */
  function meter(score, threshold) {
    var bar = h('span', { class: 'meter-fill' + (score < threshold ? ' below' : '') });
    var tick = h('span', { class: 'meter-tick' });
    bar.style.width = Math.max(0, Math.min(1, score)) * 100 + '%';
    tick.style.left = Math.max(0, Math.min(1, threshold)) * 100 + '%';
    return h('span', { class: 'meter', 'aria-hidden': 'true' }, bar, tick);
  }

  function live(check, serving) {
    if (!check) return h('span', {}, 'not checked yet');
    if (typeof check.live_score === 'number') {
      // a check of the version this one replaced is still worth seeing, but say whose it is
      var whose = check.version && check.version !== serving ? ' (of ' + check.version + ')' : '';
      return h('span', {}, num(check.live_score) + whose + ' on ' + check.samples + ' fresh rows, ',
        Dash.timeNode(check.timestamp));
    }
    if (check.verdict === 'estimated' || check.verdict === 'estimated_below_threshold') {
      return h('span', {}, 'waiting for labels; estimated instead (', Dash.timeNode(check.timestamp), ')');
    }
    if (check.verdict === 'insufficient_fresh_data') {
      return h('span', {}, 'waiting for fresh data (', Dash.timeNode(check.timestamp), ')');
    }
    return h('span', {}, check.verdict || '\u2014');
  }

  /* The score estimated while labels are pending: its own row, labelled "estimated",
     never in the Score row. Anomaly detection is not estimated, and says so. */
  function estimated(m) {
    if (typeof m.estimated_value === 'number') {
      return h('span', { class: 'estimated', title: 'An estimate from the model\'s outputs on '
        + 'rows whose labels have not arrived (' + m.estimate_method + '), not a measured score' },
      'estimated ' + num(m.estimated_value) + ' [' + num(m.estimated_low) + ', '
        + num(m.estimated_high) + '] on ' + m.estimated_rows + ' rows awaiting labels');
    }
    var note = m.last_check && m.last_check.estimate_note;
    return m.task === 'anomaly' && note ? h('span', { class: 'muted' }, 'not estimated: ' + note) : null;
  }

  function drift(check) {
    var found = check && check.drift;
    if (!found || typeof found.max_psi !== 'number') return '\u2014';
    var top = (found.top_features || [])[0];
    return h('span', {
      class: found.max_psi >= PSI_ALERT ? 'drifted' : '',
      title: 'Largest population stability index of a feature against the training data; '
        + PSI_ALERT + ' or more is a shift'
    }, 'PSI ' + num(found.max_psi, 2) + (top ? ' \u00b7 ' + top[0] : ''));
  }

  function signed(value) {
    return (value > 0 ? '+' : '') + num(value);
  }

  /* The newest version's gate decision (GET /ml/training/history `model_versions`): promoted
     or held, its difference from production with the bootstrap interval, and its worst
     slice; the decision's full words on hover. Versions recorded before the gate kept its
     evidence have none: nothing is shown. */
  function gate(versions) {
    var newest = (versions || []).filter(function (v) { return v.gate; }).pop();
    if (!newest) return null;
    var g = newest.gate;
    var parts = [newest.version + (g.promoted ? ' promoted' : ' held')];
    if (g.interval) {
      parts.push(signed(g.interval.difference) + ', ' + Math.round(g.interval.confidence * 100)
        + '% interval [' + signed(g.interval.low) + ', ' + signed(g.interval.high) + ']');
    }
    if (g.worst_slice) {
      parts.push('worst slice ' + g.worst_slice.column + '=' + g.worst_slice.value + ' '
        + signed(g.worst_slice.difference) + ' (' + g.worst_slice.rows + ' rows)');
    }
    return h('span', { class: 'gate', title: g.decision }, parts.join(' \u00b7 '));
  }

  function update(m, versions) {
    var card = cards[m.name];
    card.root.className = 'model state-' + m.state + (card.open ? ' open' : '');
    card.badge.className = 'badge state-' + m.state;
    fill(card.badge, Dash.STATES[m.state] || m.state);
    var score = typeof m.score === 'number'
      ? h('span', { class: 'score' },
        h('span', {}, num(m.score) + ' vs ' + num(m.threshold, 2) + ' ' + m.metric),
        meter(m.score, m.threshold))
      : 'threshold ' + num(m.threshold, 2) + ' ' + m.metric;
    var decided = gate(versions);
    var guess = estimated(m);
    var version = m.production_version
      ? h('span', {}, m.production_version + ' \u00b7 trained ', Dash.timeNode(m.trained_at),
        ' \u00b7 ', h('a', {
          class: 'card-link', href: '/ml/models/' + encodeURIComponent(m.name) + '/versions/'
            + encodeURIComponent(m.production_version) + '/card'
        }, 'card'))
      : (m.error ? 'unreadable: ' + m.error : 'none yet');
    fill.apply(null, [card.facts].concat(
      Dash.fact('Version', version), Dash.fact('Score', score),
      Dash.fact('Live', live(m.last_check, m.production_version)),
      guess ? Dash.fact('Estimated', guess) : [],
      Dash.fact('Drift', drift(m.last_check)),
      decided ? Dash.fact('Gate', decided) : []));
  }

  function tally(models) {
    return Object.keys(Dash.STATES).map(function (state) {
      var n = models.filter(function (m) { return m.state === state; }).length;
      return n ? n + ' ' + Dash.STATES[state].toLowerCase() : '';
    }).filter(Boolean);
  }

  // `versions`: the history's model_versions, {name: [entries, oldest first]}, if at hand.
  function render(models, versions) {
    Dash.fleetSize = models.length;  // a history row of fewer models names them
    if (!Object.keys(cards).length) build(models);
    models.forEach(function (m) { update(m, versions && versions[m.name]); });
    groups.forEach(function (group) {
      fill(summaries[group[0]], tally(models.filter(function (m) { return m.group === group[0]; }))
        .join(' \u00b7 '));
    });
    fill(Dash.$('fleet'), models.length + ' models: ' + tally(models).join(', '));
  }

  function toggle(name, open) {
    var card = cards[name];
    card.open = open === undefined ? !card.open : open;
    card.root.classList.toggle('open', card.open);
    card.head.setAttribute('aria-expanded', String(card.open));
    card.detail.hidden = !card.open;
    card.confirming = false;
    card.drawn = null;
    if (card.open) load(card);
  }

  function load(card) {
    var path = '/ml/models/' + encodeURIComponent(card.name) + '/timeline?limit=200';
    return Dash.api(path).then(function (timeline) {
      var text = JSON.stringify(timeline);
      card.timeline = timeline;
      // unchanged: leave the chart and buttons alone, so a click or a hover is not cut short
      if (card.open && card.drawn !== text) {
        card.drawn = text;
        window.TimelineChart.render(card.chart, timeline);
        renderActions(card);
        fill.apply(null, [card.events].concat(timeline.events.slice(-6).reverse().map(function (e) {
          return h('li', {}, h('span', { class: 'event-kind kind-' + e.kind }, e.kind), ' ',
            Dash.timeNode(e.time), ' ', e.detail);
        })));
      }
    }, function (err) {
      card.drawn = null;
      fill(card.chart, h('p', { class: 'message error' }, 'Could not load the timeline: ' + err.message));
    });
  }

  /* Rollback in two steps: the button only asks; the confirmation does it. */
  function renderActions(card) {
    var production = card.timeline.aliases.production;
    var previous = card.timeline.aliases.previous;
    var redraw = function (confirming) {
      return function () { card.confirming = confirming; renderActions(card); };
    };
    var parts = [h('p', { class: 'aliases' }, 'Serving ' + (production || 'nothing')
      + ' \u00b7 previous ' + (previous || 'none'))];
    if (!previous) {
      parts.push(h('p', { class: 'muted' }, 'No previous version to roll back to.'));
    } else if (card.confirming) {
      parts.push(h('p', { class: 'confirm' }, 'Serve ' + previous + ' instead of ' + production
        + '? Predictions switch at once; the audit records it.'),
      h('div', { class: 'actions' },
        h('button', {
          type: 'button', class: 'danger', 'data-action': 'confirm-rollback',
          onclick: function () { rollback(card, previous); }
        }, 'Yes, roll back to ' + previous),
        h('button', { type: 'button', onclick: redraw(false) }, 'Cancel')));
    } else {
      parts.push(h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'danger-outline', 'data-action': 'rollback', onclick: redraw(true)
      }, 'Roll back to ' + previous + '\u2026')));
    }
    fill.apply(null, [card.actions].concat(parts));
  }

  function say(card, message, isError) {
    card.message.hidden = !message;
    card.message.textContent = message || '';
    card.message.classList.toggle('error', Boolean(isError));
  }

  function rollback(card, version) {
    // The version confirmed is sent, so a concurrent change cannot make this serve another.
    Dash.authed('/ml/models/' + encodeURIComponent(card.name) + '/rollback', {
      method: 'POST', body: { version: version, reason: 'rollback from the dashboard' }
    }).then(function (data) {
      say(card, 'Rolled back: ' + data.audit.from + ' \u2192 ' + data.audit.to + '.');
    }, function (err) {
      say(card, 'Rollback refused: ' + err.message, true);
    }).then(function () {
      card.confirming = false;
      card.drawn = null;  // redraw even when refused: the confirmation must go
      return load(card);
    }).then(Dash.refresh);
  }

  /* An alert links to /#model-<name>: open that card and bring it into view. */
  function openFromHash() {
    var match = /^#model-([a-z_]+)$/.exec(window.location.hash);
    var card = match && cards[match[1]];
    if (!card) return false;
    if (!card.open) toggle(card.name, true);
    card.root.scrollIntoView({ block: 'start' });
    return true;
  }

  function openCards() {
    return Object.keys(cards).map(function (n) { return cards[n]; })
      .filter(function (card) { return card.open; });
  }

  Dash.models = {
    render: render,
    openFromHash: openFromHash,
    reloadOpen: function () { return Promise.all(openCards().map(load)); },
    redraw: function () {
      openCards().forEach(function (card) {
        if (card.timeline) window.TimelineChart.render(card.chart, card.timeline);
      });
    }
  };
})();
