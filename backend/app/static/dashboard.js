/* The operator dashboard's main loop: training status, "Train now", alerts, the history
   table, and polling (window.Dash.refresh).

   Polls status, models, alerts and the history page shown: every 2 s while a run is going
   (or one this page follows has not reported its result yet), every 15 s otherwise or
   while the API does not answer, and every 60 s while the tab is hidden. When the run it
   follows lets go of its lock, it fetches the run's record and keeps the result on show,
   with the bar full, until the next run starts. */
(function () {
  'use strict';

  var Dash = window.Dash;
  var $ = Dash.$;
  var h = Dash.h;
  var fill = Dash.fill;
  var num = Dash.num;
  var FAST = 2000;
  var SLOW = 15000;
  var HIDDEN = 60000;
  var HISTORY_PAGE = 10;
  var RESULT_STATE = { success: 'healthy', partial: 'watch', failed: 'degraded', running: 'retraining' };
  var ui = {
    timer: null, busy: false, again: false, training: false, lastOk: null, hashDone: false,
    followed: null, tries: 0, result: null, historyOffset: 0
  };

  // ---- training -----------------------------------------------------------------------------

  function setBar(percent, result) {
    var bar = $('progress');
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute('data-result', result || '');
    bar.classList.remove('indeterminate');
    $('progress-bar').style.width = percent + '%';
  }

  function renderProgress(status) {
    var progress = status.progress;
    var text = $('progress-text');
    if (status.trainer_status.is_training && progress) {
      if (typeof progress.total === 'number' && progress.total > 0) {
        setBar(Math.round(100 * progress.done / progress.total));
        var waiting = progress.in_flight || [];
        fill(text, h('strong', {}, progress.done + '/' + progress.total + ' models'),
          ' \u00b7 run ' + progress.run_id + ' (' + (progress.trigger || 'manual') + ')',
          waiting.length ? ' \u00b7 in flight: ' + Dash.listNames(waiting, 3) : '');
      } else {  // its first instants: it holds the lock but has not loaded the data yet
        setBar(0);
        $('progress').classList.add('indeterminate');
        fill(text, 'Starting run ' + (progress.run_id || '') + '\u2026');
      }
      return;
    }
    var run = ui.result;
    if (!run) {
      setBar(0);
      fill(text, 'Idle.');
      return;
    }
    var total = run.models_trained || 0;
    setBar(100, run.status);
    fill(text, h('strong', {}, total + '/' + total + ' models'), ' \u00b7 run ' + run.run_id + ' ',
      Dash.badge(RESULT_STATE[run.status] || 'degraded', run.status),
      ' ' + (run.successful_models || 0) + ' trained, ' + (run.failed_models || 0) + ' failed in '
      + num(run.duration_seconds, 1) + ' s, average ' + num(run.avg_accuracy) + '; promoted: '
      + ((run.promoted || []).length ? Dash.listNames(run.promoted, 4) : 'none')
      + ((run.unchanged || []).length ? '; unchanged (same data): ' + Dash.listNames(run.unchanged, 4) : '')
      + ((run.errors || []).length ? '; errors: ' + run.errors.join('; ') : ''));
  }

  function renderStatus(status) {
    var stats = status.trainer_status.stats;
    Dash.timeZone = status.timezone || 'UTC';  // first: every time below is shown in it
    Dash.keyRequired = Boolean(status.api_key_required);
    ui.training = status.trainer_status.is_training;
    fill($('run-state'), ui.training ? 'Training' : 'Idle');
    $('run-state').className = 'badge ' + (ui.training ? 'state-retraining' : 'state-idle');
    renderProgress(status);
    var scheduled = function (value) {
      return value ? Dash.timeNode(value)
        : status.scheduler_active ? '\u2014' : 'not scheduled here';
    };
    fill.apply(null, [$('facts')].concat(
      Dash.fact('Last training', Dash.timeNode(stats.last_training)),
      Dash.fact('Next daily run', scheduled(status.next_run)),
      Dash.fact('Next check', scheduled(status.next_check)),
      Dash.fact('Last check', Dash.timeNode(status.last_check)),
      Dash.fact('Success rate', num(stats.success_rate, 1) + '% of ' + stats.total_trainings + ' runs'),
      Dash.fact('Scheduler', status.scheduler_active ? 'active in this process'
        : status.scheduler_enabled ? 'standby (another process holds the lease)' : 'disabled here'),
      Dash.fact('Lease holder', status.lease_holder || 'nobody')));
    var button = $('train-now');
    button.disabled = ui.training;
    button.title = ui.training ? 'A run is going; one at a time'
      : 'Train all ' + (Dash.fleetSize || '') + ' models now';
  }

  function say(message, isError) {
    var node = $('action-message');
    node.hidden = !message;
    node.textContent = message || '';
    node.classList.toggle('error', Boolean(isError));
  }

  /* Follow the running run (ours or the scheduler's); once it has let go of its lock,
     fetch how it ended. */
  function followRun(status) {
    var running = status.progress && status.progress.run_id;
    if (running) {
      if (ui.followed !== running) ui.result = null;
      ui.followed = running;
      ui.tries = 0;
      return Promise.resolve();
    }
    if (!ui.followed) return Promise.resolve();
    var runId = ui.followed;
    return Dash.api('/ml/training/runs/' + encodeURIComponent(runId)).then(function (run) {
      if (run.status === 'running') {
        if (++ui.tries < 5) return;  // its record lags its lock by an instant
        ui.followed = null;
        say('Run ' + runId + ' stopped without recording its end; see the training history.', true);
        return;
      }
      ui.followed = null;
      ui.result = run;
      renderProgress(status);
      say('');
      ui.again = true;  // versions and history changed after this poll read them
    }, function (err) {
      ui.followed = null;
      say('Run ' + runId + ': ' + err.message, true);
    });
  }

  function trainNow() {
    $('train-now').disabled = true;
    say('Starting a training run of all ' + (Dash.fleetSize || '') + ' models\u2026');
    Dash.authed('/ml/training/trigger', { method: 'POST' }).then(function (data) {
      ui.followed = data.run_id;
      ui.tries = 0;
      ui.result = null;
      say('Run ' + data.run_id + ' started.');
    }, function (err) {
      if (err.status === 409 && err.error.run_id) {
        ui.followed = err.error.run_id;
        say('A run is already going (' + err.error.run_id + '); following it.');
      } else {
        $('train-now').disabled = false;
        say('Could not start a run: ' + err.message, true);
      }
    }).then(refresh);
  }

  // ---- alerts and history -------------------------------------------------------------------

  function renderAlerts(data) {
    var alerts = data.alerts;
    fill($('alert-count'), alerts.length ? alerts.length + (alerts.length === data.page.limit ? '+' : '') : '');
    if (!alerts.length) {
      fill($('alert-list'), h('li', { class: 'muted' }, 'No alerts.'));
      return;
    }
    fill.apply(null, [$('alert-list')].concat(alerts.map(function (a) {
      // the same link twice does not fire hashchange: open the card on the click as well
      var link = a.model ? h('a', {
        href: '#model-' + a.model, onclick: function () { setTimeout(Dash.models.openFromHash, 0); }
      }, a.model) : null;
      return h('li', { class: 'alert level-' + (a.level || 'info') },
        h('div', { class: 'alert-head' }, h('span', { class: 'level' }, a.level || 'info'), ' ',
          link, ' ', h('span', { class: 'kind' }, a.kind || ''), ' ', Dash.timeNode(a.timestamp)),
        h('div', { class: 'alert-message' }, a.message || ''));
    })));
  }

  /* A run of some of the models names them (`models`, from the history); a full run does not. */
  function covered(run, trained) {
    var names = run.models || [];
    if (!names.length || !Dash.fleetSize || names.length >= Dash.fleetSize) return String(trained);
    return h('span', { class: 'covered', title: names.join(', ') },
      h('span', { class: 'count' }, String(trained)), ' ', h('span', { class: 'names' }, Dash.listNames(names, 3)));
  }

  function historyRow(run) {
    var trained = typeof run.models_trained === 'number' ? run.models_trained : (run.models || []).length;
    var state = RESULT_STATE[run.status] || 'degraded';
    var unchanged = run.unchanged || [];
    var result = run.status === 'running' ? Dash.badge(state, 'running')
      : h('span', {}, Dash.badge(state, run.status || '?'), ' ' + (run.successful_models || 0) + '/' + trained,
        unchanged.length ? h('span', { class: 'unchanged', title: 'Same data and parameters as production: '
          + 'no new version. ' + unchanged.join(', ') }, ' \u00b7 ' + unchanged.length + ' unchanged') : null);
    return h('tr', {},
      h('td', {}, Dash.timeNode(run.timestamp)),
      h('td', {}, run.trigger || '\u2014'),
      h('td', { class: 'num' }, typeof run.duration_seconds === 'number' ? num(run.duration_seconds, 1) + ' s' : '\u2014'),
      h('td', { class: 'num models-cell' }, covered(run, trained)),
      h('td', {}, result),
      h('td', { class: 'num' }, num(run.avg_accuracy)));
  }

  function renderHistory(data) {
    var rows = data.history.trainings.map(historyRow);
    if (!rows.length) {
      rows = [h('tr', {}, h('td', { colspan: '6', class: 'muted' },
        ui.historyOffset ? 'No older runs.' : 'No training runs yet.'))];
    }
    fill.apply(null, [$('history-rows')].concat(rows));
    var page = data.page;
    fill($('history-page'), page.count ? 'Runs ' + (page.offset + 1) + '\u2013' + (page.offset + page.count)
      + ' of ' + data.stats.total_trainings : '');
    $('history-prev').disabled = page.offset === 0;
    $('history-next').disabled = page.count < page.limit;
  }

  function turnPage(delta) {
    ui.historyOffset = Math.max(0, ui.historyOffset + delta * HISTORY_PAGE);
    refresh();
  }

  // ---- polling ------------------------------------------------------------------------------

  function connected() {
    ui.lastOk = new Date();
    $('banner').hidden = true;
    document.body.classList.remove('stale');
    fill($('conn'), 'updated ' + Dash.when(ui.lastOk.getTime()));
    $('conn').className = 'conn ok';
  }

  function disconnected(err) {
    if (!(err instanceof Dash.ApiError)) {
      // a fault of this page, not of the API: say so, and leave a trace for whoever debugs it
      console.error(err);
      err = new Dash.ApiError(0, 'the page failed to show the answer (' + err + ')');
    }
    var banner = $('banner');
    banner.textContent = (err.status ? 'The API answered ' + err.status + ': ' : 'Cannot reach the API: ')
      + err.message + '. ' + (ui.lastOk ? 'Showing what was read at ' + Dash.when(ui.lastOk.getTime()) + '; ' : '')
      + 'retrying every ' + SLOW / 1000 + ' s.';
    banner.hidden = false;
    document.body.classList.add('stale');
    fill($('conn'), 'offline');
    $('conn').className = 'conn down';
  }

  function schedule() {
    clearTimeout(ui.timer);
    var offline = !$('banner').hidden;
    var wait = document.hidden ? HIDDEN : !offline && (ui.training || ui.followed) ? FAST : SLOW;
    ui.timer = setTimeout(refresh, wait);
  }

  function refresh() {
    if (ui.busy) {  // one poll at a time; the one going will be followed by another
      ui.again = true;
      return;
    }
    clearTimeout(ui.timer);
    ui.busy = true;
    Promise.all([
      Dash.api('/ml/training/status'), Dash.api('/ml/models'), Dash.api('/ml/alerts?limit=25'),
      Dash.api('/ml/training/history?limit=' + HISTORY_PAGE + '&offset=' + ui.historyOffset)
    ]).then(function (answers) {
      renderStatus(answers[0]);
      Dash.models.render(answers[1].models, answers[3].history.model_versions);
      renderAlerts(answers[2]);
      renderHistory(answers[3]);
      connected();
      if (!ui.hashDone) ui.hashDone = Dash.models.openFromHash();
      return followRun(answers[0]).then(Dash.models.reloadOpen);
    }).catch(disconnected).then(function () {
      ui.busy = false;
      if (ui.again) {
        ui.again = false;
        refresh();
      } else {
        schedule();
      }
    });
  }

  // ---- backtest ------------------------------------------------------------------------------

  /* The latest policy backtest (python -m backend.ml backtest): a table and its chart. Fetched
     once on load, not polled: a backtest is a rare, long CLI run. The panel is added here so
     the page's markup stays as it is when no one has run one. */
  function renderBacktest(doc) {
    var rows = doc.rows.map(function (s) {
      if (!s.available) {
        return h('tr', {}, h('td', {}, s.policy), h('td', { colspan: '5', class: 'muted' }, s.reason || 'not available'));
      }
      var alerts = Object.keys(s.alerts).map(function (k) { return k + ' ' + s.alerts[k]; }).join(', ');
      return h('tr', {}, h('td', {}, s.policy), h('td', { class: 'num' }, num(s.mean_live_score)),
        h('td', { class: 'num' }, String(s.days_below_threshold)), h('td', { class: 'num' }, String(s.retrains)),
        h('td', { class: 'num' }, num(s.cpu_seconds, 1)), h('td', { class: 'backtest-alerts' }, alerts || 'none'));
    });
    var what = doc.days + ' days, ' + doc.models.length + ' models'
      + (doc.scenario ? ', ' + doc.scenario + ' from day ' + doc.at : ', no scenario');
    var panel = h('section', { class: 'card backtest', id: 'backtest', 'aria-labelledby': 'backtest-h' },
      h('div', { class: 'card-head' }, h('h2', { id: 'backtest-h' }, 'Policy backtest'),
        h('span', { class: 'muted' }, what)),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Policy'), h('th', { scope: 'col', class: 'num' }, 'Mean live'),
          h('th', { scope: 'col', class: 'num' }, 'Days below'), h('th', { scope: 'col', class: 'num' }, 'Retrains'),
          h('th', { scope: 'col', class: 'num' }, 'CPU s'), h('th', { scope: 'col' }, 'Alerts'))),
        h.apply(null, ['tbody', {}].concat(rows)))),
      h('img', { class: 'backtest-chart', src: '/ml/backtest/latest.svg?t=' + encodeURIComponent(doc.created_at),
        alt: 'Mean live score per day for each policy' }));
    document.querySelector('main.layout').appendChild(panel);
  }

  function loadBacktest() {
    Dash.api('/ml/backtest').then(function (data) {
      if (data.latest) renderBacktest(data.latest);
    }, function () { /* the panel is optional: the rest of the page says if the API is down */ });
  }

  Dash.refresh = refresh;

  document.addEventListener('DOMContentLoaded', function () {
    var resizing = null;
    $('train-now').addEventListener('click', trainNow);
    $('history-prev').addEventListener('click', function () { turnPage(-1); });
    $('history-next').addEventListener('click', function () { turnPage(1); });
    window.addEventListener('hashchange', Dash.models.openFromHash);
    window.addEventListener('resize', function () {  // charts are drawn at their box's width
      clearTimeout(resizing);
      resizing = setTimeout(Dash.models.redraw, 150);
    });
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) refresh();
    });
    refresh();
    loadBacktest();
  });
})();
