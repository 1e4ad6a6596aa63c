"""Policy rehearsal: simulated days replayed through the real check, runner and store.

`world` builds one private state folder per policy (database, models, logs, signing key)
and the simulated clock; `policies` says what each retraining policy does on a day; `replay`
runs the days and measures; `report` and `chart` write `backtest.json` and `backtest.svg`;
`command` is the CLI's `backtest`.
"""
