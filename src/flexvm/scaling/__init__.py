"""Scale sets: autoscale rules, their backtest, and the services that apply them."""
