/* The JSON API as the dashboard uses it (window.Dash.api, Dash.authed, Dash.ApiError).

   Every answer is an envelope; `api` resolves with its `data` or rejects with an ApiError
   carrying the HTTP status (0 when nothing answered) and the envelope's message. `authed`
   is for trigger and rollback: it sends the API key kept in sessionStorage (this tab only,
   gone when it closes) and, when the service refuses (401/403), asks for the key in a
   dialog and tries again, until the operator cancels. */
(function () {
  'use strict';

  var Dash = window.Dash;
  var KEY_STORE = 'ml-scheduler-api-key';

  function ApiError(status, message, error) {
    this.status = status;
    this.message = message;
    this.error = error || {};
  }
  ApiError.prototype.toString = function () { return 'ApiError ' + this.status + ': ' + this.message; };
  Dash.ApiError = ApiError;

  Dash.api = function (path, options) {
    options = options || {};
    var headers = { Accept: 'application/json' };
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    if (options.key) headers.Authorization = 'Bearer ' + options.key;
    return fetch(path, {
      method: options.method || 'GET', headers: headers, cache: 'no-store',
      body: options.body === undefined ? undefined : JSON.stringify(options.body)
    }).catch(function (err) {
      throw new ApiError(0, 'no answer (' + (err && err.message || err) + ')');
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        if (!response.ok || !body || body.status !== 'success') {
          var error = body && body.error;
          throw new ApiError(response.status,
            error && error.message || response.statusText || 'no answer', error);
        }
        return body.data;
      });
    });
  };

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ''; } catch (err) { return ''; }
  }

  function storeKey(key) {
    try { sessionStorage.setItem(KEY_STORE, key); } catch (err) { /* storage off: asked again next time */ }
  }

  /* Resolves with the key typed, or null when the operator cancels. */
  function askKey(refused) {
    var dialog = Dash.$('key-dialog');
    var input = Dash.$('key-input');
    Dash.$('key-why').textContent = refused
      ? 'That key was refused. Enter the API key (ML_API_KEY) again.'
      : 'This service requires its API key (ML_API_KEY) to train or roll back. '
        + 'It is kept in this browser tab only.';
    input.value = '';
    dialog.returnValue = '';
    return new Promise(function (resolve) {
      function closed() {
        dialog.removeEventListener('close', closed);
        resolve(dialog.returnValue === 'ok' && input.value ? input.value : null);
      }
      dialog.addEventListener('close', closed);
      dialog.showModal();
      input.focus();
    });
  }

  /* Set from the status (api_key_required): ask for the key before the first request
     instead of sending one the service is known to refuse. */
  Dash.keyRequired = false;

  /* Ask for the key (again, when `refused`), keep it, and send the request with it. */
  function askThenRetry(path, options, refused, status) {
    return askKey(refused).then(function (typed) {
      if (!typed) throw new ApiError(status, 'no API key given, so nothing was done');
      storeKey(typed);
      return authed(path, options);
    });
  }

  function authed(path, options) {
    var key = storedKey();
    if (!key && Dash.keyRequired) return askThenRetry(path, options, false, 401);
    return Dash.api(path, Object.assign({}, options, { key: key })).catch(function (err) {
      if (err.status !== 401 && err.status !== 403) throw err;
      return askThenRetry(path, options, Boolean(key), err.status);
    });
  }
  Dash.authed = authed;

  document.addEventListener('DOMContentLoaded', function () {
    Dash.$('key-cancel').addEventListener('click', function () { Dash.$('key-dialog').close('cancel'); });
  });
})();
