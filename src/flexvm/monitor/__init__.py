"""Monitoring: counters read from hosts become rates, kept with roll-ups, shown and advised on."""
